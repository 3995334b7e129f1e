//! Data-exchange frames on port 1001 (spec §10.1–10.2) and event-stream
//! frames on port 1002 (§10.4).
//!
//! Both services run over a stream connection, so frames arrive as an
//! unstructured byte stream. The decoders here are incremental and sans-IO:
//! [`decode`] and [`decode_event`] look at the bytes buffered so far and
//! return `Ok(None)` until a whole frame is present, then the frame (borrowed
//! from the buffer) and how many bytes it used. Length fields are checked
//! against the reference's limits *before* waiting for the body, so a peer
//! cannot make a receiver buffer more than 16 MiB by lying about a length.
//!
//! The 8-byte data-exchange header also has a smoltcp-style [`Packet`] view
//! and [`Repr`]. FILE bodies are split by [`split_file_body`] with the
//! reference's rules and error texts (`tests/vectors/dataexchange.json`);
//! [`read_frame`] reproduces the reference reader's errors (`EOF`,
//! `unexpected EOF`) for a stream that ends after the given bytes.

use core::fmt;

/// Data-exchange port (§2.5).
pub const DATA_EXCHANGE_PORT: u16 = 1001;
/// Event-stream port (§2.5).
pub const EVENT_STREAM_PORT: u16 = 1002;
/// Data-exchange header: type u32 ‖ length u32 (§10.1).
pub const HEADER_LEN: usize = 8;
/// Largest data-exchange body; one more byte is refused (§10.1, Appendix C).
pub const MAX_BODY_LEN: usize = 16 * 1024 * 1024;
/// Longest FILE name (§10.1, Appendix C).
pub const MAX_FILENAME_LEN: usize = 255;
/// Longest event topic (§10.4, Appendix C).
pub const MAX_TOPIC_LEN: usize = 1024;
/// Largest event payload (§10.4, Appendix C).
pub const MAX_EVENT_PAYLOAD_LEN: usize = 16 * 1024 * 1024;
/// The topic that subscribes to every topic (§10.4).
pub const WILDCARD_TOPIC: &[u8] = b"*";

/// The frame type (§10.1). Unknown values are carried, not refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FrameType {
    /// 1: UTF-8 text.
    Text,
    /// 2: opaque bytes.
    Binary,
    /// 3: a JSON document.
    Json,
    /// 4: `name_len u16 ‖ name ‖ content`.
    File,
    /// Any other value; named `UNKNOWN(<n>)`.
    Unknown(u32),
}

impl From<u32> for FrameType {
    fn from(v: u32) -> FrameType {
        match v {
            1 => FrameType::Text,
            2 => FrameType::Binary,
            3 => FrameType::Json,
            4 => FrameType::File,
            n => FrameType::Unknown(n),
        }
    }
}

impl From<FrameType> for u32 {
    fn from(t: FrameType) -> u32 {
        match t {
            FrameType::Text => 1,
            FrameType::Binary => 2,
            FrameType::Json => 3,
            FrameType::File => 4,
            FrameType::Unknown(n) => n,
        }
    }
}

impl fmt::Display for FrameType {
    /// `TEXT`, `BINARY`, `JSON`, `FILE` or `UNKNOWN(<n>)` (§10.2).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameType::Text => f.write_str("TEXT"),
            FrameType::Binary => f.write_str("BINARY"),
            FrameType::Json => f.write_str("JSON"),
            FrameType::File => f.write_str("FILE"),
            FrameType::Unknown(n) => write!(f, "UNKNOWN({n})"),
        }
    }
}

/// Errors of both services' framing. Texts are the reference's where it has
/// one (`tests/vectors/dataexchange.json`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum Error {
    /// Body length over [`MAX_BODY_LEN`]; the connection is closed.
    #[error("frame too large: {0}")]
    FrameTooLarge(u32),
    /// The stream ended before the first byte of a needed part.
    #[error("EOF")]
    Eof,
    /// The stream ended inside a needed part.
    #[error("unexpected EOF")]
    UnexpectedEof,
    /// FILE name longer than [`MAX_FILENAME_LEN`].
    #[error("filename too long: {0} bytes (max 255)")]
    FilenameTooLong(usize),
    /// FILE name containing `..`, `/` or `\`.
    #[error("invalid filename: path traversal characters not allowed")]
    PathTraversal,
    /// Event topic over [`MAX_TOPIC_LEN`].
    #[error("topic too long: {0} bytes (max 1024)")]
    TopicTooLong(usize),
    /// Event payload over [`MAX_EVENT_PAYLOAD_LEN`].
    #[error("event payload too large: {0} bytes (max 16777216)")]
    EventPayloadTooLarge(usize),
    /// The 8-byte header view needs 8 bytes.
    #[error("data-exchange header truncated: {0} bytes (need 8)")]
    Truncated(usize),
    /// A FILE-PART body shorter than its fixed fields or inconsistent
    /// (offset past the total, content past the total).
    #[error("malformed file part: {0}")]
    BadPart(&'static str),
    /// Output buffer too small.
    #[error("buffer too small: have {have} bytes, need {need}")]
    BufferTooSmall {
        /// Bytes available.
        have: usize,
        /// Bytes required.
        need: usize,
    },
}

/// A zero-copy view of a data-exchange frame (header, then body).
/// Header getters cannot panic once [`Packet::check_len`] has passed; the
/// body accessor never panics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// At least the 8 header bytes.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated(len));
        }
        Ok(())
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The type field.
    pub fn frame_type(&self) -> FrameType {
        FrameType::from(self.u32_at(0))
    }

    /// The body length field, unvalidated.
    pub fn body_len(&self) -> u32 {
        self.u32_at(4)
    }

    /// The body as far as it is present (at most `body_len` bytes).
    pub fn body(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return &[];
        }
        let end = HEADER_LEN
            .saturating_add(self.body_len() as usize)
            .min(b.len());
        &b[HEADER_LEN..end]
    }

    /// True when the whole body is present.
    pub fn is_complete(&self) -> bool {
        self.buffer.as_ref().len() >= HEADER_LEN
            && self.body().len() as u64 == u64::from(self.body_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the type field.
    pub fn set_frame_type(&mut self, t: FrameType) {
        self.buffer.as_mut()[..4].copy_from_slice(&u32::from(t).to_be_bytes());
    }

    /// Sets the body length field.
    pub fn set_body_len(&mut self, len: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&len.to_be_bytes());
    }

    /// The body bytes present, mutable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return &mut [];
        }
        let end = HEADER_LEN.saturating_add(self.body_len() as usize).min(len);
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The decoded data-exchange header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Repr {
    /// Frame type.
    pub frame_type: FrameType,
    /// Body length, ≤ [`MAX_BODY_LEN`].
    pub body_len: usize,
}

impl Repr {
    /// Reads the header and refuses a body over [`MAX_BODY_LEN`] (§10.1);
    /// the body itself need not be present yet.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        let len = packet.body_len();
        if len as usize > MAX_BODY_LEN {
            return Err(Error::FrameTooLarge(len));
        }
        Ok(Repr {
            frame_type: packet.frame_type(),
            body_len: len as usize,
        })
    }

    /// Header plus body.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }

    /// Writes the 8 header bytes.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`]; a `body_len` over
    /// `u32::MAX` is truncated. [`DataFrame::emit`] checks both.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_frame_type(self.frame_type);
        packet.set_body_len(self.body_len as u32);
    }
}

/// A complete data-exchange frame borrowing its body.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DataFrame<'a> {
    /// Frame type.
    pub frame_type: FrameType,
    /// Body (for FILE: name prefix and content, see [`split_file_body`]).
    pub body: &'a [u8],
}

impl<'a> DataFrame<'a> {
    /// A frame from its parts.
    pub const fn new(frame_type: FrameType, body: &'a [u8]) -> DataFrame<'a> {
        DataFrame { frame_type, body }
    }

    /// Header plus body.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Writes the frame into the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.body.len() > MAX_BODY_LEN {
            return Err(Error::FrameTooLarge(
                u32::try_from(self.body.len()).unwrap_or(u32::MAX),
            ));
        }
        let need = self.buffer_len();
        let Some(out) = buf.get_mut(..need) else {
            return Err(Error::BufferTooSmall {
                have: buf.len(),
                need,
            });
        };
        out[HEADER_LEN..].copy_from_slice(self.body);
        Repr {
            frame_type: self.frame_type,
            body_len: self.body.len(),
        }
        .emit(&mut Packet::new_unchecked(out));
        Ok(need)
    }

    /// The frame in a new `Vec` (fails only on a body over 16 MiB).
    pub fn to_vec(&self) -> Result<Vec<u8>, Error> {
        // Refuse before allocating.
        self.emit(&mut []).or_else(|e| match e {
            Error::BufferTooSmall { .. } => Ok(0),
            e => Err(e),
        })?;
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut v)?;
        Ok(v)
    }

    /// For FILE frames, the split body (§10.1); `None` for other types.
    pub fn file(&self) -> Option<Result<FileBody<'a>, Error>> {
        (self.frame_type == FrameType::File).then(|| split_file_body(self.body))
    }

    /// The content length the service acknowledges (§10.2): the body, or for
    /// FILE the content after the name prefix.
    pub fn content_len(&self) -> Result<usize, Error> {
        match self.file() {
            Some(f) => Ok(f?.content.len()),
            None => Ok(self.body.len()),
        }
    }
}

/// Incremental decoder: `Ok(None)` until a whole frame is buffered, then the
/// frame and the bytes it used. A length over 16 MiB fails as soon as the
/// header is present.
pub fn decode(buf: &[u8]) -> Result<Option<(DataFrame<'_>, usize)>, Error> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let repr = Repr::parse(&Packet::new_unchecked(buf))?;
    let Some(body) = buf.get(HEADER_LEN..repr.buffer_len()) else {
        return Ok(None);
    };
    Ok(Some((
        DataFrame::new(repr.frame_type, body),
        repr.buffer_len(),
    )))
}

/// The reference reader on a stream that ends after `buf`: like [`decode`],
/// but a missing part is an error — [`Error::Eof`] when none of it arrived
/// (including an empty stream), [`Error::UnexpectedEof`] when part did.
pub fn read_frame(buf: &[u8]) -> Result<(DataFrame<'_>, usize), Error> {
    match buf.len() {
        0 => return Err(Error::Eof),
        n if n < HEADER_LEN => return Err(Error::UnexpectedEof),
        _ => {}
    }
    match decode(buf)? {
        Some(found) => Ok(found),
        None if buf.len() == HEADER_LEN => Err(Error::Eof),
        None => Err(Error::UnexpectedEof),
    }
}

/// A FILE body split into name and content (§10.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FileBody<'a> {
    /// The file name bytes (empty when absent); free of `..`, `/` and `\`,
    /// so it is already its own base name.
    pub name: &'a [u8],
    /// The file content.
    pub content: &'a [u8],
}

impl FileBody<'_> {
    /// The name as text, if it is UTF-8.
    pub fn name_str(&self) -> Option<&str> {
        core::str::from_utf8(self.name).ok()
    }
}

/// Splits a FILE body with the reference's rules (§10.1): if the body cannot
/// hold `2 + name_len` bytes it is not split (no name, all content); else a
/// name over 255 bytes or containing `..`, `/` or `\` is an error.
pub fn split_file_body(body: &[u8]) -> Result<FileBody<'_>, Error> {
    let unsplit = FileBody {
        name: &[],
        content: body,
    };
    let (Some(&hi), Some(&lo)) = (body.first(), body.get(1)) else {
        return Ok(unsplit);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    let Some(name) = body.get(2..2 + name_len) else {
        return Ok(unsplit);
    };
    if name_len > MAX_FILENAME_LEN {
        return Err(Error::FilenameTooLong(name_len));
    }
    if name.windows(2).any(|w| w == b"..") || name.iter().any(|&c| c == b'/' || c == b'\\') {
        return Err(Error::PathTraversal);
    }
    Ok(FileBody {
        name,
        content: &body[2 + name_len..],
    })
}

/// Builds a FILE body `name_len ‖ name ‖ content`, refusing names the
/// receiver would refuse.
pub fn file_body(name: &str, content: &[u8]) -> Result<Vec<u8>, Error> {
    let n = name.as_bytes();
    if n.len() > MAX_FILENAME_LEN {
        return Err(Error::FilenameTooLong(n.len()));
    }
    if name.contains("..") || name.contains('/') || name.contains('\\') {
        return Err(Error::PathTraversal);
    }
    let mut v = Vec::with_capacity(2 + n.len() + content.len());
    v.extend_from_slice(&(n.len() as u16).to_be_bytes());
    v.extend_from_slice(n);
    v.extend_from_slice(content);
    Ok(v)
}

/// `ACK <TYPENAME> <n> bytes`, the service's success reply (§10.2).
pub fn ack_text(frame_type: FrameType, content_len: usize) -> String {
    format!("ACK {frame_type} {content_len} bytes")
}

/// `ERR <TYPENAME> save failed: <error>`, the service's failure reply (§10.2).
pub fn err_text(frame_type: FrameType, error: &str) -> String {
    format!("ERR {frame_type} save failed: {error}")
}

/// A reply text as the TEXT frame the service sends (§10.2).
pub fn reply_frame(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + text.len());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&(text.len() as u32).to_be_bytes());
    v.extend_from_slice(text.as_bytes());
    v
}

/// An event-stream frame (§10.4): `topic_len u16 ‖ topic ‖ payload_len u32 ‖
/// payload`. The first frame of a connection is the subscription.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Event<'a> {
    /// The topic bytes; [`WILDCARD_TOPIC`] subscribes to all.
    pub topic: &'a [u8],
    /// The payload (ignored in a subscription).
    pub payload: &'a [u8],
}

impl<'a> Event<'a> {
    /// An event from its parts.
    pub const fn new(topic: &'a [u8], payload: &'a [u8]) -> Event<'a> {
        Event { topic, payload }
    }

    /// Encoded length.
    pub const fn buffer_len(&self) -> usize {
        2 + self.topic.len() + 4 + self.payload.len()
    }

    /// True for the `*` topic.
    pub fn is_wildcard(&self) -> bool {
        self.topic == WILDCARD_TOPIC
    }

    /// Writes the frame into the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.topic.len() > MAX_TOPIC_LEN {
            return Err(Error::TopicTooLong(self.topic.len()));
        }
        if self.payload.len() > MAX_EVENT_PAYLOAD_LEN {
            return Err(Error::EventPayloadTooLarge(self.payload.len()));
        }
        let need = self.buffer_len();
        let Some(out) = buf.get_mut(..need) else {
            return Err(Error::BufferTooSmall {
                have: buf.len(),
                need,
            });
        };
        let t = self.topic.len();
        out[..2].copy_from_slice(&(t as u16).to_be_bytes());
        out[2..2 + t].copy_from_slice(self.topic);
        out[2 + t..6 + t].copy_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out[6 + t..].copy_from_slice(self.payload);
        Ok(need)
    }

    /// The frame in a new `Vec`.
    pub fn to_vec(&self) -> Result<Vec<u8>, Error> {
        // Refuse before allocating.
        self.emit(&mut []).or_else(|e| match e {
            Error::BufferTooSmall { .. } => Ok(0),
            e => Err(e),
        })?;
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut v)?;
        Ok(v)
    }
}

/// Incremental event decoder: `Ok(None)` until a whole frame is buffered,
/// then the event and the bytes it used. Oversized topic or payload lengths
/// fail as soon as their length field is present.
pub fn decode_event(buf: &[u8]) -> Result<Option<(Event<'_>, usize)>, Error> {
    let (Some(&hi), Some(&lo)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let t = usize::from(u16::from_be_bytes([hi, lo]));
    if t > MAX_TOPIC_LEN {
        return Err(Error::TopicTooLong(t));
    }
    let Some(len_bytes) = buf.get(2 + t..6 + t) else {
        return Ok(None);
    };
    let p = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    if p > MAX_EVENT_PAYLOAD_LEN {
        return Err(Error::EventPayloadTooLarge(p));
    }
    let Some(payload) = buf.get(6 + t..6 + t + p) else {
        return Ok(None);
    };
    Ok(Some((Event::new(&buf[2..2 + t], payload), 6 + t + p)))
}

/// Frame type of a FILE-PART (this implementation's extension, not in the
/// reference): one piece of a file too large for one 16 MiB frame. A
/// reference receiver answers `ACK UNKNOWN(1346764801) …` and stores
/// nothing, so a sender learns at the first piece that the peer cannot
/// take large files, and nothing is lost silently. The value spells "PF"
/// and 1 in its high and low bytes, far from the reference's 1-4.
pub const FILE_PART_TYPE: u32 = 0x5046_0001;
/// Fixed part of a FILE-PART body after the name: offset u64 ‖ total u64.
const PART_FIXED: usize = 16;

/// A FILE-PART body: `name_len u16 ‖ name ‖ offset u64 ‖ total u64 ‖
/// content`. The pieces of one file travel in order on one connection;
/// `offset` is where `content` starts, `total` the whole file's size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FilePart<'a> {
    /// The file's name as the sender gave it (the receiver sanitises it).
    pub name: &'a [u8],
    /// Where `content` starts in the file.
    pub offset: u64,
    /// The whole file's size.
    pub total: u64,
    /// This piece.
    pub content: &'a [u8],
}

impl<'a> FilePart<'a> {
    /// Parses a FILE-PART body; never panics.
    pub fn parse(body: &'a [u8]) -> Result<FilePart<'a>, Error> {
        let (Some(&hi), Some(&lo)) = (body.first(), body.get(1)) else {
            return Err(Error::BadPart("no name length"));
        };
        let n = usize::from(u16::from_be_bytes([hi, lo]));
        let name = body
            .get(2..2 + n)
            .ok_or(Error::BadPart("name past the body"))?;
        let fixed = body
            .get(2 + n..2 + n + PART_FIXED)
            .ok_or(Error::BadPart("offset and total missing"))?;
        let mut o = [0u8; 8];
        o.copy_from_slice(&fixed[..8]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&fixed[8..]);
        let (offset, total) = (u64::from_be_bytes(o), u64::from_be_bytes(t));
        let content = &body[2 + n + PART_FIXED..];
        let end = offset
            .checked_add(content.len() as u64)
            .ok_or(Error::BadPart("offset overflow"))?;
        if end > total {
            return Err(Error::BadPart("content past the total"));
        }
        Ok(FilePart {
            name,
            offset,
            total,
            content,
        })
    }

    /// Body length when emitted.
    pub const fn buffer_len(&self) -> usize {
        2 + self.name.len() + PART_FIXED + self.content.len()
    }

    /// Whether this piece ends the file.
    pub fn is_last(&self) -> bool {
        self.offset + self.content.len() as u64 == self.total
    }

    /// The whole frame (header and body); errors if the name is over 65,535
    /// bytes or the frame over [`MAX_BODY_LEN`].
    pub fn to_frame(&self) -> Result<Vec<u8>, Error> {
        let len = self.buffer_len();
        if len > MAX_BODY_LEN {
            return Err(Error::FrameTooLarge(len as u32));
        }
        let n =
            u16::try_from(self.name.len()).map_err(|_| Error::FilenameTooLong(self.name.len()))?;
        let mut v = Vec::with_capacity(HEADER_LEN + len);
        v.extend_from_slice(&FILE_PART_TYPE.to_be_bytes());
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(self.name);
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.total.to_be_bytes());
        v.extend_from_slice(self.content);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(FrameType::Text.to_string(), "TEXT");
        assert_eq!(FrameType::from(9).to_string(), "UNKNOWN(9)");
        assert_eq!(FrameType::from(0).to_string(), "UNKNOWN(0)");
        for v in [0u32, 1, 2, 3, 4, 5, u32::MAX] {
            assert_eq!(u32::from(FrameType::from(v)), v);
        }
    }

    #[test]
    fn replies() {
        assert_eq!(ack_text(FrameType::Text, 12), "ACK TEXT 12 bytes");
        assert_eq!(
            err_text(FrameType::File, "disk full"),
            "ERR FILE save failed: disk full"
        );
        let r = reply_frame("ACK TEXT 12 bytes");
        let (f, n) = decode(&r).unwrap().unwrap();
        assert_eq!(n, r.len());
        assert_eq!(f.frame_type, FrameType::Text);
        assert_eq!(f.body, b"ACK TEXT 12 bytes");
    }

    #[test]
    fn incremental_decode() {
        let mut stream = DataFrame::new(FrameType::Json, b"{}").to_vec().unwrap();
        stream.extend(DataFrame::new(FrameType::Binary, &[]).to_vec().unwrap());
        for n in 0..10 {
            assert_eq!(decode(&stream[..n]), Ok(None), "{n}");
        }
        let (f, used) = decode(&stream).unwrap().unwrap();
        assert_eq!(
            (f.frame_type, f.body, used),
            (FrameType::Json, &b"{}"[..], 10)
        );
        let (f, used) = decode(&stream[10..]).unwrap().unwrap();
        assert_eq!(
            (f.frame_type, f.body.len(), used),
            (FrameType::Binary, 0, 8)
        );
    }

    #[test]
    fn eof_kinds() {
        assert_eq!(read_frame(&[]), Err(Error::Eof));
        assert_eq!(read_frame(&[0, 0, 0]), Err(Error::UnexpectedEof));
        assert_eq!(read_frame(&[0, 0, 0, 1, 0, 0, 0, 2]), Err(Error::Eof));
        assert_eq!(
            read_frame(&[0, 0, 0, 1, 0, 0, 0, 2, 9]),
            Err(Error::UnexpectedEof)
        );
        assert!(read_frame(&[0, 0, 0, 1, 0, 0, 0, 0]).is_ok());
    }

    #[test]
    fn oversize_fails_before_body() {
        let mut h = [0u8; 8];
        h[4..].copy_from_slice(&(MAX_BODY_LEN as u32 + 1).to_be_bytes());
        assert_eq!(
            decode(&h),
            Err(Error::FrameTooLarge(MAX_BODY_LEN as u32 + 1))
        );
        h[4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&h).is_err());
        let p = Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.body(), &[] as &[u8]);
        assert!(!p.is_complete());
    }

    #[test]
    fn file_bodies() {
        let b = file_body("notes.txt", b"hi").unwrap();
        let f = split_file_body(&b).unwrap();
        assert_eq!((f.name, f.content), (&b"notes.txt"[..], &b"hi"[..]));
        assert_eq!(f.name_str(), Some("notes.txt"));
        assert_eq!(split_file_body(&[]).unwrap().content, &[] as &[u8]);
        assert_eq!(split_file_body(&[7]).unwrap().content, &[7]);
        assert_eq!(split_file_body(&[0, 0]).unwrap().name, &[] as &[u8]);
        assert_eq!(file_body("../x", b""), Err(Error::PathTraversal));
        assert_eq!(file_body("a\\b", b""), Err(Error::PathTraversal));
        assert_eq!(
            file_body(&"a".repeat(256), b""),
            Err(Error::FilenameTooLong(256))
        );
        assert!(file_body(&"a".repeat(255), b"").is_ok());
        // A single dot is fine; only ".." is refused.
        assert!(split_file_body(&file_body("a.b.c", b"").unwrap()).is_ok());
        let df = DataFrame::new(FrameType::File, &b);
        assert_eq!(df.content_len(), Ok(2));
        assert_eq!(
            DataFrame::new(FrameType::Text, &b).content_len(),
            Ok(b.len())
        );
    }

    #[test]
    fn events() {
        let e = Event::new(b"weather", b"{}");
        let v = e.to_vec().unwrap();
        for n in 0..v.len() {
            assert_eq!(decode_event(&v[..n]), Ok(None), "{n}");
        }
        assert_eq!(decode_event(&v), Ok(Some((e, v.len()))));
        assert!(Event::new(b"*", b"").is_wildcard());
        let long = vec![b'a'; MAX_TOPIC_LEN + 1];
        assert_eq!(
            Event::new(&long, b"").to_vec(),
            Err(Error::TopicTooLong(1025))
        );
        assert_eq!(decode_event(&[0x04, 0x01]), Err(Error::TopicTooLong(1025)));
        assert_eq!(
            decode_event(&[0, 0, 0x01, 0, 0, 1]),
            Err(Error::EventPayloadTooLarge(MAX_EVENT_PAYLOAD_LEN + 1))
        );
        let mut small = [0u8; 3];
        assert!(matches!(
            e.emit(&mut small),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn oversize_emit_is_refused() {
        let big = vec![0u8; MAX_BODY_LEN + 1];
        assert_eq!(
            DataFrame::new(FrameType::Binary, &big).to_vec(),
            Err(Error::FrameTooLarge(MAX_BODY_LEN as u32 + 1))
        );
        assert_eq!(
            Event::new(b"t", &big).to_vec(),
            Err(Error::EventPayloadTooLarge(MAX_EVENT_PAYLOAD_LEN + 1))
        );
        assert!(DataFrame::new(FrameType::Binary, &big[1..])
            .to_vec()
            .is_ok());
    }

    #[test]
    fn header_view_setters() {
        let mut buf = [0u8; 12];
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        Repr {
            frame_type: FrameType::Unknown(77),
            body_len: 4,
        }
        .emit(&mut p);
        p.body_mut().copy_from_slice(b"abcd");
        assert!(p.is_complete());
        let r = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(r.frame_type, FrameType::Unknown(77));
        assert_eq!(r.buffer_len(), 12);
        assert!(Packet::new_checked(&buf[..7]).is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn frame_round_trip(t in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..500),
                                extra in proptest::collection::vec(any::<u8>(), 0..20)) {
                let f = DataFrame::new(FrameType::from(t), &body);
                let mut v = f.to_vec().unwrap();
                prop_assert_eq!(v.len(), f.buffer_len());
                v.extend_from_slice(&extra);
                prop_assert_eq!(decode(&v), Ok(Some((f, f.buffer_len()))));
                prop_assert_eq!(read_frame(&v), Ok((f, f.buffer_len())));
            }

            #[test]
            fn file_round_trip(name in "[a-zA-Z0-9_ .-]{0,255}", content in proptest::collection::vec(any::<u8>(), 0..200)) {
                prop_assume!(!name.contains(".."));
                let b = file_body(&name, &content).unwrap();
                let f = split_file_body(&b).unwrap();
                prop_assert_eq!(f.name, name.as_bytes());
                prop_assert_eq!(f.content, &content[..]);
            }

            #[test]
            fn event_round_trip(topic in proptest::collection::vec(any::<u8>(), 0..1025),
                                payload in proptest::collection::vec(any::<u8>(), 0..500)) {
                let e = Event::new(&topic, &payload);
                let v = e.to_vec().unwrap();
                prop_assert_eq!(decode_event(&v), Ok(Some((e, v.len()))));
            }

            #[test]
            fn arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..300)) {
                if let Ok(Some((f, n))) = decode(&v) {
                    prop_assert!(n <= v.len());
                    let _ = f.file();
                    let _ = f.content_len();
                }
                let _ = read_frame(&v);
                let _ = split_file_body(&v);
                if let Ok(Some((e, n))) = decode_event(&v) {
                    prop_assert!(n <= v.len());
                    prop_assert_eq!(e.to_vec().unwrap(), v[..n].to_vec());
                }
                let p = Packet::new_unchecked(&v[..]);
                let _ = (p.body(), p.is_complete());
            }
        }
    }

    #[test]
    fn file_part_round_trip_and_hostile_bodies() {
        let p = FilePart {
            name: b"big.bin",
            offset: 4,
            total: 10,
            content: b"abcdef",
        };
        let f = p.to_frame().unwrap();
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()),
            FILE_PART_TYPE
        );
        let q = FilePart::parse(&f[HEADER_LEN..]).unwrap();
        assert_eq!(p, q);
        assert!(q.is_last());
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x05ab",
            b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert!(FilePart::parse(bad).is_err());
        }
        // content past the total, and an offset that would overflow
        let mut b = vec![0, 0];
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        b.push(1);
        assert!(FilePart::parse(&b).is_err());
    }
}
