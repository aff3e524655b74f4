//! Length-checked frames over QUIC streams: how peers send to one peer directly.
//!
//! A direct message is one unidirectional QUIC stream on a connection with ALPN
//! [`FRAME_ALPN`], carrying `u32` big-endian length ‖ frame, where the frame is a wire-encoded
//! [`DirectFrame`]. The receiver reads the 4-byte length first and refuses (stops the stream)
//! anything over its cap before allocating; it also takes the frame's bytes from a node-wide
//! in-flight budget, so many peers sending large frames at once cannot exhaust memory. The
//! sender is authenticated by QUIC/TLS: the connection's remote id *is* the sender's node id.

use iroh::endpoint::{RecvStream, SendStream, VarInt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// ALPN of ova-net's direct frames.
/// (Version 2: lease ends travel as time remaining, see [`ova_scheduler::message`].)
pub const FRAME_ALPN: &[u8] = b"ova/frame/2";

/// Stream error code: the frame was over the receiver's cap.
pub const CODE_TOO_LARGE: VarInt = VarInt::from_u32(1);
/// Stream error code: the receiver is out of in-flight budget.
pub const CODE_OVERLOADED: VarInt = VarInt::from_u32(2);

/// Budget granularity: permits are KiB.
const BUDGET_UNIT: usize = 1024;

/// What a direct frame carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectFrame {
    /// An application (scheduler) message, opaque to ova-net.
    App(#[serde(with = "ova_jobs::wire::byte_string")] Vec<u8>),
    /// Several application messages for the same peer, in order: one stream, one length
    /// check and one budget grant for a whole turn's worth of small messages.
    Batch(#[serde(with = "ova_jobs::wire::byte_lists")] Vec<Vec<u8>>),
    /// A goodbye ([`crate::signed::GossipBody::Leave`], sealed as on gossip) sent straight to
    /// a peer: a departure can break the gossip overlay it would travel on (a node leaving a
    /// chain, or at the same time as a neighbour), and a peer that misses it keeps the
    /// departed node until its advert expires.
    Goodbye(#[serde(with = "ova_jobs::wire::byte_string")] Vec<u8>),
}

/// A frame could not be sent or received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length is over the cap.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The in-flight budget is exhausted.
    #[error("receiver overloaded: no budget for a {0}-byte frame")]
    Overloaded(usize),
    /// The stream ended early, was reset, or the connection failed.
    #[error("stream: {0}")]
    Stream(String),
}

/// A node-wide budget of bytes held by frames being read.
#[derive(Debug)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    /// A budget of `bytes` (rounded down to whole KiB, at least one frame of 1 KiB).
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new((bytes / BUDGET_UNIT).max(1))))
    }

    /// Takes room for `len` bytes, released when the permit is dropped; `None` if there is
    /// not enough left right now.
    pub fn take_owned(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(len.div_ceil(BUDGET_UNIT).max(1)).ok()?;
        self.0.clone().try_acquire_many_owned(units).ok()
    }
}

/// Writes one length-prefixed frame and finishes the stream.
pub async fn write_frame(stream: &mut SendStream, frame: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(frame.len())
        .map_err(|_| FrameError::TooLarge { len: frame.len(), max: u32::MAX as usize })?;
    stream.write_all(&len.to_be_bytes()).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    stream.write_all(frame).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    stream.finish().map_err(|e| FrameError::Stream(e.to_string()))?;
    Ok(())
}

/// Reads one length-prefixed frame of at most `max` bytes, within `budget`; returns it with
/// its share of the budget, released when the permit is dropped.
///
/// The length is checked against `max` and the budget before anything else is read or
/// allocated; a refused stream is stopped with an error code so the sender learns why.
pub async fn read_frame_owned(
    stream: &mut RecvStream,
    max: usize,
    budget: &Budget,
) -> Result<(Vec<u8>, OwnedSemaphorePermit), FrameError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        stream.stop(CODE_TOO_LARGE).ok();
        return Err(FrameError::TooLarge { len, max });
    }
    let Some(permit) = budget.take_owned(len) else {
        stream.stop(CODE_OVERLOADED).ok();
        return Err(FrameError::Overloaded(len));
    };
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    Ok((buf, permit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_returned() {
        let b = Budget::new(4 * BUDGET_UNIT);
        let p = b.take_owned(3 * BUDGET_UNIT).unwrap();
        assert!(b.take_owned(2 * BUDGET_UNIT).is_none());
        drop(p);
        assert!(b.take_owned(4 * BUDGET_UNIT).is_some());
        assert!(b.take_owned(usize::MAX).is_none());
    }
}
