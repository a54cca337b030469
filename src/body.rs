//! The one body type the gateway answers with: upstream bodies stream through it unbuffered,
//! and the gateway's own small answers are full bodies of the same type.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Errors a body may yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body, boxed once so every layer shares one type.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body with `Bytes` chunks.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Why [`collect_limited`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The body is larger than allowed.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The body failed while streaming.
    #[error("{0}")]
    Stream(String),
}

/// Reads a whole body of at most `limit` bytes. (A hand loop rather than `Limited`: `Limited`'s
/// `Into<BoxError>` bound on an already-boxed error trips a rustc higher-ranked lifetime bug
/// when the future must be `Send`.)
pub async fn collect_limited<B>(mut body: B, limit: usize) -> Result<Bytes, CollectError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CollectError::Stream(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(CollectError::TooLarge(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
