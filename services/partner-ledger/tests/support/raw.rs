//! Calling any RPC by path with bytes as the request and the response: a codec that passes
//! bytes through, so a test can send what no generated client would (any RPC, any body).

// Shared by several test binaries, each using a part.
#![allow(dead_code)]

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut item = vec![0; src.remaining()];
        src.copy_to_slice(&mut item);
        Ok(Some(item))
    }
}

/// What an RPC answered: the response's bytes, or the status code and message.
pub type Answer = Result<Vec<u8>, (Code, String)>;

/// Calls `path` with `body`.
pub async fn call(channel: Channel, path: String, body: Vec<u8>) -> Answer {
    call_as(channel, path, body, None).await
}

/// `request` with `authorization: Bearer <token>` when a token is given.
fn with_token(body: Vec<u8>, token: Option<&str>) -> tonic::Request<Vec<u8>> {
    let mut request = tonic::Request::new(body);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Calls `path` with `body`, presenting `token` when given.
pub async fn call_as(channel: Channel, path: String, body: Vec<u8>, token: Option<&str>) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| (Code::Unavailable, e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path.as_str())
        .map_err(|e| (Code::Internal, e.to_string()))?;
    grpc.unary(with_token(body, token), path, Raw)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| (s.code(), s.message().to_owned()))
}

/// Calls the server-streaming RPC `path` with `body` and reads the whole stream: the
/// messages, concatenated, or the first error.
pub async fn call_streaming(channel: Channel, path: String, body: Vec<u8>) -> Answer {
    call_streaming_as(channel, path, body, None).await
}

/// [`call_streaming`], presenting `token` when given.
pub async fn call_streaming_as(
    channel: Channel,
    path: String,
    body: Vec<u8>,
    token: Option<&str>,
) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| (Code::Unavailable, e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path.as_str())
        .map_err(|e| (Code::Internal, e.to_string()))?;
    let status = |s: Status| (s.code(), s.message().to_owned());
    let mut stream = grpc
        .server_streaming(with_token(body, token), path, Raw)
        .await
        .map_err(status)?
        .into_inner();
    let mut all = Vec::new();
    while let Some(message) = stream.message().await.map_err(status)? {
        all.extend(message);
    }
    Ok(all)
}

/// Codes this API never answers for a caller's input: its own faults, or a lost connection.
pub fn is_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Internal | Code::Unknown | Code::Cancelled | Code::DataLoss | Code::Unimplemented
    )
}
