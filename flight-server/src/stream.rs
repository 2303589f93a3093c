//! Answers as FlightData streams: encoding schemas and batches for metadata commands and
//! prepared statements (query results are encoded in `query`, on the query runtime).

use std::pin::Pin;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, IpcMessage, SchemaAsIpc};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use tonic::{Response, Status};

use crate::Error;

/// What DoGet answers.
pub(crate) type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send>>;

/// A schema as the IPC message prepared-statement results carry.
pub(crate) fn schema_bytes(schema: &Schema) -> Result<Bytes, Error> {
    let message: Result<IpcMessage, ArrowError> =
        SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into();
    message
        .map(|IpcMessage(bytes)| bytes)
        .map_err(|e| Error::Encode(format!("a schema: {e}")))
}

/// DoGet of a metadata command: its one batch.
pub(crate) fn one_batch<E: std::fmt::Display>(
    schema: SchemaRef,
    batch: Result<RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Error::Encode(format!("the answer: {e}")))?;
    Ok(Response::new(stream_batches(
        schema,
        futures::stream::once(async { Ok(batch) }),
    )))
}

/// DoGet of a metadata command whose answer is always `batch` (the empty key listings).
pub(crate) fn empty_answer(batch: RecordBatch) -> Result<Response<DoGetStream>, Status> {
    one_batch::<ArrowError>(batch.schema(), Ok(batch))
}

/// The FlightData stream of `batches`.
fn stream_batches(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> DoGetStream {
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Error::Encode(format!("the answer: {other}")).into(),
        });
    Box::pin(data)
}
