//! Stateless statement handles and tickets.
//!
//! A prepared statement's handle carries its SQL and, once parameters are bound through DoPut,
//! the parameter rows as an Arrow IPC stream: any Vigie server can execute it, nothing is kept
//! per client, and the handle stays valid until the client drops it. A ticket is the same
//! message plus the id of the physical plan made by GetFlightInfo, so DoGet does not plan again;
//! when that plan is gone (expired, fetched already, another server) DoGet plans from the SQL.

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use datafusion::common::ScalarValue;
use prost::Message;
use tonic::Status;

/// What a handle or ticket holds.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Handle {
    /// The statement as the client wrote it.
    #[prost(string, tag = "1")]
    pub(crate) sql: String,
    /// The bound parameter rows (Arrow IPC stream); empty when none are bound.
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) parameters: Bytes,
    /// In tickets: the id of the cached physical plan; 0 for none.
    #[prost(uint64, tag = "3")]
    pub(crate) plan: u64,
    /// Random, set by CreatePreparedStatement: tells two clients' handles of the same SQL apart
    /// (parameters bound to one are remembered for it alone).
    #[prost(bytes = "bytes", tag = "4")]
    pub(crate) id: Bytes,
}

/// The largest parameter payload a handle carries (it travels with every execution).
const MAX_PARAMETER_BYTES: usize = 1 << 20;

/// Marks Vigie's handles, so that a foreign or corrupted one gets a clear error.
const MAGIC: &[u8] = b"vigie1:";

impl Handle {
    /// A handle for `sql` without parameters.
    pub(crate) fn new(sql: String) -> Self {
        Self {
            sql,
            parameters: Bytes::new(),
            plan: 0,
            id: Bytes::new(),
        }
    }

    /// A prepared statement's handle for `sql`, unique to this preparation.
    pub(crate) fn prepared(sql: String) -> Self {
        Self {
            id: Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes()),
            ..Self::new(sql)
        }
    }

    /// The bytes sent to the client.
    pub(crate) fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(MAGIC.len() + self.encoded_len());
        out.extend_from_slice(MAGIC);
        self.encode(&mut out)
            .expect("a Vec grows to hold any message");
        out.into()
    }

    /// Reads a handle sent back by a client.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, Status> {
        bytes
            .strip_prefix(MAGIC)
            .and_then(|rest| Self::decode(rest).ok())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "this statement handle or ticket was not made by Vigie; prepare the statement again",
                )
            })
    }

    /// The handle without its plan id: what a cached plan is checked against.
    pub(crate) fn statement_key(&self) -> Bytes {
        Self {
            plan: 0,
            ..self.clone()
        }
        .to_bytes()
    }

    /// The handle as CreatePreparedStatement made it (no parameters, no plan): what parameters
    /// bound through DoPut are remembered under.
    pub(crate) fn binding_key(&self) -> Bytes {
        Self {
            plan: 0,
            parameters: Bytes::new(),
            ..self.clone()
        }
        .to_bytes()
    }

    /// Stores `batches` (the rows bound through DoPut) as the parameters.
    pub(crate) fn with_parameters(mut self, batches: &[RecordBatch]) -> Result<Self, Status> {
        let Some(first) = batches.first() else {
            return Err(Status::invalid_argument(
                "DoPut for a prepared statement sent no parameter rows",
            ));
        };
        let encode = || -> Result<Vec<u8>, arrow::error::ArrowError> {
            let mut writer = StreamWriter::try_new(Vec::new(), &first.schema())?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.into_inner()
        };
        let encoded = encode()
            .map_err(|e| Status::invalid_argument(format!("cannot read the parameters: {e}")))?;
        if encoded.len() > MAX_PARAMETER_BYTES {
            return Err(Status::invalid_argument(format!(
                "the bound parameters take {} bytes, more than the {MAX_PARAMETER_BYTES} a \
                 statement accepts; bind fewer rows per execution",
                encoded.len()
            )));
        }
        self.parameters = encoded.into();
        Ok(self)
    }

    /// The bound parameter rows, one `Vec` of values per row; `None` when none are bound.
    pub(crate) fn parameter_rows(&self) -> Result<Option<Vec<Vec<ScalarValue>>>, Status> {
        if self.parameters.is_empty() {
            return Ok(None);
        }
        let bad = |e: &dyn std::fmt::Display| {
            Status::invalid_argument(format!("the handle's parameters are unreadable: {e}"))
        };
        let reader = StreamReader::try_new(std::io::Cursor::new(&self.parameters[..]), None)
            .map_err(|e| bad(&e))?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| bad(&e))?;
            for row in 0..batch.num_rows() {
                let values = batch
                    .columns()
                    .iter()
                    .map(|column| ScalarValue::try_from_array(column, row))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(&e))?;
                rows.push(values);
            }
        }
        if rows.is_empty() {
            return Err(Status::invalid_argument(
                "the bound parameters hold no row; bind at least one",
            ));
        }
        Ok(Some(rows))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn handles_round_trip_with_parameters() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("$1", DataType::Int64, true),
            Field::new("$2", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(7), None])),
                Arc::new(StringArray::from(vec!["a", "b"])),
            ],
        )
        .unwrap();
        let handle = Handle::new("SELECT $1, $2".into())
            .with_parameters(&[batch])
            .unwrap();
        let back = Handle::from_bytes(&handle.to_bytes()).unwrap();
        assert_eq!(back, handle);
        let rows = back.parameter_rows().unwrap().unwrap();
        assert_eq!(
            rows,
            vec![
                vec![ScalarValue::Int64(Some(7)), ScalarValue::from("a")],
                vec![ScalarValue::Int64(None), ScalarValue::from("b")],
            ]
        );
        assert_eq!(
            Handle::new("SELECT 1".into()).parameter_rows().unwrap(),
            None
        );
    }

    #[test]
    fn foreign_handles_are_refused() {
        let error = Handle::from_bytes(b"SELECT 1").unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("not made by Vigie"), "{error}");
    }
}
