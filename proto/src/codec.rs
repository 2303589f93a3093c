//! A prost codec whose decode errors are the client's fault (`INVALID_ARGUMENT`), not the server's.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// The codec of every `vigie.v1` service: prost encoding; decoding maps a malformed message to
/// `INVALID_ARGUMENT` naming the expected message type.
#[derive(Debug, Clone)]
pub struct VigieCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for VigieCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for VigieCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + prost::Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = VigieDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        VigieDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, mapping protobuf errors to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct VigieDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + prost::Name + Default> Decoder for VigieDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!("cannot decode message as {}: {e}", U::full_name()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::WriteRequest;
    use prost::Name;

    #[test]
    fn names_are_generated() {
        assert_eq!(WriteRequest::full_name(), "vigie.v1.WriteRequest");
    }
}
