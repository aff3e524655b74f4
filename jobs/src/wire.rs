//! The versioned, size-capped envelope for everything Ova puts on the network or on disk.
//!
//! A frame is one version byte ([`WIRE_VERSION`]) followed by a postcard encoding of the
//! message. [`decode`] refuses a frame larger than the caller's cap *before* decoding anything,
//! refuses unknown versions, and refuses trailing bytes, so a peer cannot make us allocate or
//! parse more than we agreed to.
//!
//! Postcard itself never pre-allocates more than the remaining input for a length prefix, so a
//! lying length inside a frame that passed the cap cannot blow up memory either.

use serde::{Serialize, de::DeserializeOwned};

/// The wire format version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Default cap for one control frame (adverts, claims, commits): 1 MiB.
pub const MAX_CONTROL_FRAME_BYTES: usize = 1 << 20;

/// A frame could not be decoded. Each variant says why, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Larger than the cap the receiver set.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Zero bytes.
    #[error("empty frame")]
    Empty,
    /// A version this build does not speak.
    #[error("wire version {found} is not supported (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion {
        /// Version found.
        found: u8,
    },
    /// Not a valid encoding of the expected message type.
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    /// A valid message followed by junk.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

impl WireError {
    /// A short, fixed label for metrics (bounded cardinality).
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "too_large",
            WireError::Empty => "empty",
            WireError::UnsupportedVersion { .. } => "version",
            WireError::Undecodable(_) => "undecodable",
            WireError::TrailingBytes(_) => "trailing",
        }
    }
}

/// Encodes `msg` as a versioned frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Writing into a Vec only fails for types serde cannot represent, which ours never are.
    with_encoded(Some(WIRE_VERSION), msg, <[u8]>::to_vec)
        .expect("postcard encoding into a Vec cannot fail")
}

/// The postcard encoding of `value` (no version byte), in a vector of exactly its size.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    with_encoded(None, value, <[u8]>::to_vec)
}

/// `#[serde(with = "ova_jobs::wire::byte_string")]` for a `Vec<u8>` field: written as one
/// byte string instead of a sequence of `u8`s. Postcard encodes both the same way (a length,
/// then the bytes), so frames, records and content ids do not change; but a sequence is
/// written and read one call per byte, which was about 4 % of the peers' CPU on the network
/// bench's tiny units (P4) and grows with every byte of a result.
pub mod byte_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `bytes` as a byte string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    /// Reads a byte string (or, in formats that tell them apart, a sequence of bytes) into
    /// an owned value: a `Vec<u8>`, or a `Cow<[u8]>`.
    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: From<Vec<u8>>,
    {
        serde_bytes::ByteBuf::deserialize(d).map(|b| T::from(b.into_vec()))
    }
}

/// `#[serde(with = "ova_jobs::wire::byte_lists")]` for a `Vec<Vec<u8>>` field: a sequence of
/// byte strings (see [`byte_string`]; the same postcard bytes as a sequence of sequences).
pub mod byte_lists {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Most entries reserved up front from a sequence's announced length (the rest grow as
    /// they come): a lying length costs no memory.
    const RESERVE_MAX: usize = 4096;

    /// Writes `lists` as a sequence of byte strings.
    pub fn serialize<S: Serializer>(lists: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(lists.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    /// Reads a sequence of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        struct Lists;
        impl<'de> Visitor<'de> for Lists {
            type Value = Vec<Vec<u8>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of byte strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(RESERVE_MAX));
                while let Some(b) = seq.next_element::<serde_bytes::ByteBuf>()? {
                    out.push(b.into_vec());
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Lists)
    }
}

/// Scratch buffers kept up to this capacity between encodings (larger ones are dropped after
/// use, so one large frame does not pin its memory to the thread).
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    /// This thread's encoding buffer (see [`with_encoded`]).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes `value` with postcard after an optional `prefix` byte, and hands the bytes to `f`.
///
/// Postcard writes a value field by field, so encoding straight into a new `Vec` grows it
/// several times over (each time a new allocation and a copy): in a profile of the network
/// bench's tiny units (P4), reallocation took about 6 % of the peers' CPU. This encodes into a
/// per-thread buffer that keeps its capacity, so `f` usually copies the bytes out once, into
/// an allocation of the right size. An encoding started while this thread's buffer is in use
/// (a `Serialize` impl that encodes) gets a vector of its own.
fn with_encoded<T: Serialize + ?Sized, R>(
    prefix: Option<u8>,
    value: &T,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, postcard::Error> {
    let write = |buf: &mut Vec<u8>| {
        buf.clear();
        buf.extend(prefix);
        postcard::to_io(value, &mut *buf).map(drop)
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let out = write(&mut buf).map(|()| f(&buf));
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            out
        }
        Err(_) => {
            let mut own = Vec::new();
            write(&mut own).map(|()| f(&own))
        }
    })
}

/// Decodes a versioned frame of at most `max_len` bytes.
pub fn decode<T: DeserializeOwned>(frame: &[u8], max_len: usize) -> Result<T, WireError> {
    if frame.len() > max_len {
        return Err(WireError::TooLarge { len: frame.len(), max: max_len });
    }
    let (&version, body) = frame.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    let (msg, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| WireError::Undecodable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Msg {
        a: u32,
        b: Vec<u8>,
    }

    #[test]
    fn round_trip_and_errors() {
        let m = Msg { a: 7, b: vec![1, 2, 3] };
        let f = encode(&m);
        assert_eq!(decode::<Msg>(&f, 64).unwrap(), m);
        assert_eq!(decode::<Msg>(&f, 3), Err(WireError::TooLarge { len: f.len(), max: 3 }));
        assert_eq!(decode::<Msg>(&[], 64), Err(WireError::Empty));
        let mut g = f.clone();
        g[0] = 2;
        assert_eq!(decode::<Msg>(&g, 64), Err(WireError::UnsupportedVersion { found: 2 }));
        let mut g = f.clone();
        g.push(0);
        assert_eq!(decode::<Msg>(&g, 64), Err(WireError::TrailingBytes(1)));
        assert!(matches!(decode::<Msg>(&f[..f.len() - 1], 64), Err(WireError::Undecodable(_))));
    }

    /// Encodes its inner message with [`encode`] while being encoded itself (as a signed
    /// envelope's body would be), so the scratch buffer is in use.
    struct Nested(Msg);

    impl Serialize for Nested {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&encode(&self.0))
        }
    }

    #[test]
    fn encodings_are_postcard_bytes_whatever_came_before() {
        let small = Msg { a: 1, b: vec![9; 3] };
        let big = Msg { a: u32::MAX, b: (0..=255).cycle().take(3 * SCRATCH_KEEP).collect() };
        // Big after small, small after big (a dropped scratch buffer), the same one twice.
        for m in [&small, &big, &small, &small, &big, &big] {
            let plain = postcard::to_stdvec(m).unwrap();
            assert_eq!(to_vec(m).unwrap(), plain);
            assert_eq!(encode(m), [&[WIRE_VERSION][..], &plain].concat());
            assert_eq!(to_vec(m).unwrap().capacity(), plain.len(), "an exact allocation");
        }
        // An encoding inside an encoding gets a buffer of its own.
        let inner = encode(&small);
        let outer = to_vec(&Nested(Msg { a: 5, b: vec![1, 2] })).unwrap();
        let bytes: Vec<u8> = postcard::from_bytes(&outer).unwrap();
        assert_eq!(bytes, encode(&Msg { a: 5, b: vec![1, 2] }));
        assert_eq!(decode::<Msg>(&inner, 64).unwrap(), small);
    }

    #[test]
    fn lying_length_prefix_does_not_allocate() {
        // A Vec<u8> claiming 2^60 elements in a 12-byte frame must fail cleanly.
        let mut f = vec![WIRE_VERSION, 7];
        f.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(decode::<Msg>(&f, 64), Err(WireError::Undecodable(_))));
    }

    /// Byte fields as sequences (how they were written before `byte_string`).
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct AsSeqs {
        one: Vec<u8>,
        many: Vec<Vec<u8>>,
        cow: std::borrow::Cow<'static, [u8]>,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct AsBytes {
        #[serde(with = "byte_string")]
        one: Vec<u8>,
        #[serde(with = "byte_lists")]
        many: Vec<Vec<u8>>,
        #[serde(with = "byte_string")]
        cow: std::borrow::Cow<'static, [u8]>,
    }

    #[test]
    fn byte_strings_are_the_same_postcard_bytes_as_sequences() {
        let long: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        for (one, many) in [
            (vec![], vec![]),
            (vec![7], vec![vec![], vec![1, 2, 3]]),
            (long.clone(), vec![long.clone(), vec![0; 200], vec![]]),
        ] {
            let cow: std::borrow::Cow<'static, [u8]> = one.iter().rev().copied().collect();
            let seqs = AsSeqs { one: one.clone(), many: many.clone(), cow: cow.clone() };
            let bytes = AsBytes { one, many, cow };
            let encoded = to_vec(&bytes).unwrap();
            assert_eq!(encoded, postcard::to_stdvec(&seqs).unwrap(), "same bytes on the wire");
            assert_eq!(postcard::from_bytes::<AsBytes>(&encoded).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<AsSeqs>(&encoded).unwrap(), seqs);
        }
        // Lying lengths: a byte string, and a list of them, longer than the frame.
        let mut f = vec![WIRE_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(decode::<AsBytes>(&f, 64), Err(WireError::Undecodable(_))));
        f = vec![WIRE_VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 9];
        assert!(matches!(decode::<AsBytes>(&f, 64), Err(WireError::Undecodable(_))));
    }
}
