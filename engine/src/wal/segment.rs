//! The on-disk format of WAL segments, version [`FORMAT_VERSION`]: frame encoding and decoding
//! side by side.
//!
//! ```text
//! segment file  <first position, 20 digits>.wal      (the suffix carries the version: `wal` = 1)
//! frame         len u32 | crc32 u32 | position u64 | received_at i64 | payload (len bytes)
//!               little endian; the CRC (IEEE) covers everything after itself
//! end marker    24 zero bytes (a header of zeros), written after each batch, overwritten by the next
//! ```
//! Positions are dense from the file's name. The payload is a protobuf `vigie.v1.WriteRequest`
//! (see [`super::append_report`]). Reading stops at the end marker, at the end of the file, or at
//! an intact frame whose position is lower than expected (left from the file's earlier use, when a
//! crash came before the marker). Anything else (a partial header, a frame cut short, a CRC
//! mismatch, a position ahead of the expected one) is a torn or damaged tail, reported with the
//! records before it. A new format gets a new suffix, so a server never misreads a file of
//! another version: it ignores files whose suffix it does not know.

use std::path::Path;

use bytes::Bytes;

use super::{WalPosition, WalRecord};

/// The version of the format written and read here.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The suffix of the segment files of this version.
pub(crate) const SEGMENT_SUFFIX: &str = "wal";
/// The suffix of a recycled segment waiting for reuse.
pub(crate) const SPARE_SUFFIX: &str = "spare";
/// Bytes of a frame header (and of the end marker).
pub(crate) const HEADER: usize = 24;

/// Appends the frame of one record to `frames`.
pub(crate) fn encode_frame(
    frames: &mut Vec<u8>,
    len: u32,
    position: WalPosition,
    received_at: i64,
    payload: &[u8],
) {
    let start = frames.len();
    frames.extend_from_slice(&len.to_le_bytes());
    frames.extend_from_slice(&[0; 4]);
    frames.extend_from_slice(&position.to_le_bytes());
    frames.extend_from_slice(&received_at.to_le_bytes());
    frames.extend_from_slice(payload);
    let crc = crc32fast::hash(&frames[start + 8..]);
    frames[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The number of frames in `frames` (complete frames made by [`encode_frame`]).
pub(crate) fn count_frames(frames: &[u8]) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while at < frames.len() {
        let len = u32::from_le_bytes(frames[at..at + 4].try_into().expect("4")) as usize;
        at += HEADER + len;
        n += 1;
    }
    n
}

/// Parses the frames of a segment whose first record is `first`; returns the complete records,
/// the length they span and, if they end otherwise than at the end of the file or at an end
/// marker, why (a torn or damaged tail).
pub(crate) fn parse_segment(
    data: &[u8],
    first: WalPosition,
) -> (Vec<WalRecord>, usize, Option<String>) {
    let mut records = Vec::new();
    let mut at = 0;
    let mut expected = first;
    while at < data.len() {
        if data.len() - at >= HEADER && data[at..at + HEADER].iter().all(|b| *b == 0) {
            // End marker: what follows is space left from an earlier use of the file.
            return (records, at, None);
        }
        if data.len() - at < HEADER {
            return (
                records,
                at,
                Some(format!("{} bytes of a partial header", data.len() - at)),
            );
        }
        let word = |o: usize| u32::from_le_bytes(data[at + o..at + o + 4].try_into().expect("4"));
        let long = |o: usize| u64::from_le_bytes(data[at + o..at + o + 8].try_into().expect("8"));
        let len = word(0) as usize;
        let crc = word(4);
        if data.len() - at - HEADER < len {
            return (
                records,
                at,
                Some(format!("record of {len} bytes cut short at byte {at}")),
            );
        }
        let end = at + HEADER + len;
        if crc32fast::hash(&data[at + 8..end]) != crc {
            return (records, at, Some(format!("checksum mismatch at byte {at}")));
        }
        let position = long(8);
        if position < expected {
            // An intact record from the file's previous use: a crash came before the marker.
            return (records, at, None);
        }
        if position != expected {
            return (
                records,
                at,
                Some(format!(
                    "record {position} where {expected} was expected, at byte {at}"
                )),
            );
        }
        expected += 1;
        records.push(WalRecord {
            position,
            received_at: long(16) as i64,
            payload: Bytes::copy_from_slice(&data[at + HEADER..end]),
        });
        at = end;
    }
    (records, at, None)
}

/// The first position and the suffix of a segment or spare file name.
pub(crate) fn numbered(path: &Path) -> Option<(WalPosition, &str)> {
    let (number, suffix) = path.file_name()?.to_str()?.split_once('.')?;
    if number.len() != 20 {
        return None;
    }
    Some((number.parse().ok()?, suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_as_encoded_and_stop_at_the_end_marker() {
        let mut data = Vec::new();
        for (position, payload) in [(5u64, &b"abc"[..]), (6, &b""[..]), (7, &b"xyz!"[..])] {
            encode_frame(
                &mut data,
                payload.len() as u32,
                position,
                position as i64 * 10,
                payload,
            );
        }
        assert_eq!(count_frames(&data), 3);
        let good = data.len();
        data.extend_from_slice(&[0; HEADER]);
        // Space left from an earlier use of the file, after the marker.
        data.extend_from_slice(&[7; 40]);
        let (records, len, problem) = parse_segment(&data, 5);
        assert_eq!((len, problem), (good, None));
        let got: Vec<_> = records
            .iter()
            .map(|r| (r.position, r.received_at, r.payload.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                (5, 50, b"abc".to_vec()),
                (6, 60, Vec::new()),
                (7, 70, b"xyz!".to_vec())
            ]
        );
        // A flipped payload byte fails its checksum: the records before it are kept.
        let mut damaged = data[..good].to_vec();
        damaged[good - 1] ^= 1;
        let (records, len, problem) = parse_segment(&damaged, 5);
        assert_eq!(records.len(), 2);
        assert!(len < good);
        assert!(problem.unwrap().contains("checksum"));
    }
}
