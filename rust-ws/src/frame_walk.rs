//! The one frame walker of the I/O layers: follows a WebSocket byte stream through its frame
//! headers, chunk by chunk, and tells each chunk's bytes apart by frame.
//!
//! Twin: none. python-ws never sees frame bytes: Tornado hands it messages and write futures, so
//! what the three layers beneath tungstenite do here (write_batch.rs, sent_counter.rs,
//! codeless_close.rs) python-ws does on whole messages or inside Tornado's own frame code.
//!
//! Three layers read frames off a raw stream: `WriteBatch` (to set pongs apart), `SentCounter`
//! (to count a message at its last byte) and `CodelessClose` (to read the client's close code).
//! Each used to walk headers its own way; they share this walker instead. Headers are parsed by
//! tungstenite's own [`FrameHeader::parse`], so the lengths and flags read here are the ones
//! tungstenite reads. A chunk may end inside a header (a socket read can cut anywhere); the
//! walker keeps the header's first bytes until the rest arrives. A frame with a reserved opcode
//! is refused by `FrameHeader::parse` (and fails the connection in tungstenite too), so its length
//! is not known: from there on the walker passes bytes on unexamined.

use std::io::Cursor;

use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const MAX_HEAD: usize = 14;

/// Where a stream is in its frames; see the module docs.
#[derive(Debug, Default)]
pub struct FrameWalk {
    /// The first bytes of a header split across chunks.
    head: [u8; MAX_HEAD],
    head_len: u8,
    /// The current frame's header, once complete.
    header: Option<FrameHeader>,
    /// The current frame's payload: bytes still to come, and bytes already walked.
    payload_left: u64,
    payload_pos: u64,
    /// The last part handed out ended its frame.
    ended: bool,
    /// A header `FrameHeader::parse` refused: the rest of the stream is not examined.
    lost: bool,
}

/// The bytes of one frame within one chunk.
#[derive(Debug)]
pub struct Part<'a, 'w> {
    /// This frame's bytes in the chunk (header and payload alike), in stream order.
    pub bytes: &'a [u8],
    /// The payload bytes among them, and where in the frame's payload they begin.
    pub payload: &'a [u8],
    pub payload_offset: u64,
    /// The frame's header, once all of it has been seen; `None` while it is incomplete, and for
    /// the unexamined rest of a stream after a refused header.
    pub header: Option<&'w FrameHeader>,
    /// Whether `bytes` begins with the frame's first byte, and whether it ends with its last.
    pub first: bool,
    pub last: bool,
}

impl FrameWalk {
    pub fn new() -> Self {
        FrameWalk::default()
    }

    /// True between two frames: the next byte starts a frame.
    pub fn between_frames(&self) -> bool {
        !self.lost && self.head_len == 0 && (self.header.is_none() || self.ended)
    }

    /// Takes the next part off the front of `bytes` (advancing it), or `None` once it is empty.
    /// Use as `while let Some(part) = walk.next(&mut bytes) { ... }`.
    pub fn next<'a>(&mut self, bytes: &mut &'a [u8]) -> Option<Part<'a, '_>> {
        let chunk: &'a [u8] = bytes;
        if chunk.is_empty() {
            return None;
        }
        if self.lost {
            *bytes = &[];
            return Some(Part::unexamined(chunk));
        }
        if self.ended {
            self.header = None;
            self.ended = false;
        }
        let mut at = 0;
        let first = self.header.is_none() && self.head_len == 0;
        if self.header.is_none() {
            let held = self.head_len as usize;
            let parsed = if held == 0 {
                // The usual case: the whole header is in this chunk, parsed where it lies.
                let mut cursor = Cursor::new(chunk);
                FrameHeader::parse(&mut cursor)
                    .map(|h| h.map(|(h, len)| (h, len, cursor.position())))
            } else {
                let n = (MAX_HEAD - held).min(chunk.len());
                self.head[held..held + n].copy_from_slice(&chunk[..n]);
                let mut cursor = Cursor::new(&self.head[..held + n]);
                FrameHeader::parse(&mut cursor)
                    .map(|h| h.map(|(h, len)| (h, len, cursor.position())))
            };
            match parsed {
                Ok(Some((header, payload_len, head_end))) => {
                    // The header's bytes in this chunk: those past what was held.
                    at = head_end as usize - held;
                    self.head_len = 0;
                    self.payload_left = payload_len;
                    self.payload_pos = 0;
                    self.header = Some(header);
                }
                Ok(None) => {
                    // Incomplete: the chunk is shorter than what the header still needs, so all
                    // of it is header (at most MAX_HEAD bytes in all).
                    if held == 0 {
                        self.head[..chunk.len()].copy_from_slice(chunk);
                    }
                    self.head_len = (held + chunk.len()) as u8;
                    *bytes = &[];
                    return Some(Part {
                        first,
                        ..Part::unexamined(chunk)
                    });
                }
                Err(_) => {
                    self.lost = true;
                    self.head_len = 0;
                    *bytes = &[];
                    return Some(Part {
                        first,
                        ..Part::unexamined(chunk)
                    });
                }
            }
        }
        let n = self.payload_left.min((chunk.len() - at) as u64) as usize;
        let payload = &chunk[at..at + n];
        let payload_offset = self.payload_pos;
        self.payload_pos += n as u64;
        self.payload_left -= n as u64;
        at += n;
        self.ended = self.payload_left == 0;
        *bytes = &chunk[at..];
        Some(Part {
            bytes: &chunk[..at],
            payload,
            payload_offset,
            header: self.header.as_ref(),
            first,
            last: self.ended,
        })
    }
}

impl<'a> Part<'a, '_> {
    fn unexamined(bytes: &'a [u8]) -> Self {
        Part {
            bytes,
            payload: &[],
            payload_offset: 0,
            header: None,
            first: false,
            last: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

    /// One part as seen by a test: (first, last, opcode, bytes, payload).
    type Seen = (bool, bool, Option<OpCode>, Vec<u8>, Vec<u8>);

    /// Every part of `stream` fed in chunks of `size`.
    fn walk(stream: &[u8], size: usize) -> Vec<Seen> {
        let mut w = FrameWalk::new();
        let mut parts = Vec::new();
        for mut chunk in stream.chunks(size) {
            while let Some(p) = w.next(&mut chunk) {
                let op = p.header.map(|h| h.opcode);
                parts.push((p.first, p.last, op, p.bytes.to_vec(), p.payload.to_vec()));
            }
        }
        parts
    }

    /// The parts of one walk merged back into whole frames: (opcode, frame bytes, payload).
    fn frames(stream: &[u8], size: usize) -> Vec<(OpCode, Vec<u8>, Vec<u8>)> {
        let mut out: Vec<(OpCode, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut bytes = Vec::new();
        let mut payload = Vec::new();
        for (first, last, op, b, p) in walk(stream, size) {
            if first {
                assert!(bytes.is_empty());
            }
            bytes.extend(b);
            payload.extend(p);
            if last {
                out.push((
                    op.unwrap(),
                    std::mem::take(&mut bytes),
                    std::mem::take(&mut payload),
                ));
            }
        }
        assert!(bytes.is_empty(), "a frame left open");
        out
    }

    #[test]
    fn every_header_form_in_any_chunking_gives_the_same_frames() {
        let big = vec![b'x'; 70_000];
        let mut stream = vec![0x81, 0x03, b'a', b'b', b'c']; // text, 3 bytes
        stream.extend([0x89, 0x00]); // empty ping
        stream.extend([0x8A, 0x82, 1, 2, 3, 4, 9, 9]); // masked pong, 2 bytes
        stream.extend([0x81, 0x7E, 0x01, 0x00]); // text, 256 bytes
        stream.extend(&big[..256]);
        stream.extend([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0x11, 0x70]); // binary, 70 000 bytes
        stream.extend(&big);
        stream.extend([0x01, 0x01, b'p', 0x80, 0x01, b'q']); // fragmented
        let expected = frames(&stream, stream.len());
        let ops: Vec<OpCode> = expected.iter().map(|f| f.0).collect();
        assert_eq!(
            ops,
            [
                OpCode::Data(Data::Text),
                OpCode::Control(Control::Ping),
                OpCode::Control(Control::Pong),
                OpCode::Data(Data::Text),
                OpCode::Data(Data::Binary),
                OpCode::Data(Data::Text),
                OpCode::Data(Data::Continue),
            ]
        );
        assert_eq!(expected[0].2, b"abc");
        assert_eq!(expected[2].1.len(), 8);
        assert_eq!(expected[3].2.len(), 256);
        assert_eq!(expected[4].1.len(), 10 + 70_000);
        assert_eq!(
            expected
                .iter()
                .map(|f| f.1.clone())
                .collect::<Vec<_>>()
                .concat(),
            stream,
            "every byte in exactly one part, in order"
        );
        for size in [1, 2, 3, 5, 13, 4096] {
            assert_eq!(frames(&stream, size), expected, "chunks of {size}");
        }
    }

    #[test]
    fn a_whole_frame_in_one_chunk_is_one_part() {
        let parts = walk(&[0x8A, 0x01, b'p', 0x81, 0x00], 5);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.0 && p.1));
    }

    #[test]
    fn payload_offsets_count_from_the_frame_start() {
        let mut w = FrameWalk::new();
        let mut offsets = Vec::new();
        let stream = [0x82, 0x05, 1, 2, 3, 4, 5];
        for mut chunk in stream.chunks(3) {
            while let Some(p) = w.next(&mut chunk) {
                offsets.push((p.payload_offset, p.payload.to_vec()));
            }
        }
        assert_eq!(offsets, [(0, vec![1]), (1, vec![2, 3, 4]), (4, vec![5])]);
    }

    #[test]
    fn between_frames_only_at_frame_boundaries() {
        let mut w = FrameWalk::new();
        assert!(w.between_frames());
        let mut chunk: &[u8] = &[0x81, 0x7E, 0x00];
        while w.next(&mut chunk).is_some() {}
        assert!(!w.between_frames(), "inside a header");
        let mut chunk: &[u8] = &[0x02, b'h'];
        while w.next(&mut chunk).is_some() {}
        assert!(!w.between_frames(), "inside a payload");
        let mut chunk: &[u8] = b"i";
        while w.next(&mut chunk).is_some() {}
        assert!(w.between_frames());
    }

    #[test]
    fn after_a_reserved_opcode_the_rest_passes_unexamined() {
        let parts = walk(&[0x81, 0x00, 0x83, 0x01, b'x', 0x81, 0x00], 7);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].1);
        assert_eq!(parts[1].2, None);
        assert_eq!(parts[1].3, [0x83, 0x01, b'x', 0x81, 0x00]);
    }
}
