//! Our reader of a GGUF file's header (metadata and tensor index), so that tensor types
//! candle does not read can still load: [`Header`] holds candle's [`Content`] and, for each
//! tensor in a type we transcode at load ([`Transcoded`]: IQ4_NL, IQ4_XS and MXFP4, as Q8_0
//! blocks, see [`iq4`](super::iq4) and [`mxfp4`](super::mxfp4)), where its raw blocks are. Every tensor is read through
//! [`Header::tensor`]; candle's `Content::tensor` would misread a transcoded one.
//!
//! Also [`write`], a GGUF writer of raw blocks for the test fixtures (candle's writer takes
//! only the types it can quantize).

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use candle_core::{Device, Shape};

use super::{iq4, mxfp4};

/// Limits that keep a malformed header from claiming memory it does not hold (llama.cpp's).
const MAX_STRING: u64 = 1 << 30;
const MAX_ELEMENTS: u64 = 1 << 30;
const MAX_DIMS: u32 = 4;
const MAX_DEPTH: usize = 64;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A tensor type read as another: its blocks are transcoded when the tensor is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transcoded {
    /// GGML type 20: blocks of 32, an f16 scale and 4-bit indices into a fixed table of
    /// sixteen int8 values. As Q8_0: exactly.
    Iq4Nl,
    /// GGML type 23: IQ4_NL's table in super-blocks of 256 with a 6-bit scale per 32. As
    /// Q8_0: each 32's scale (the super-block's times its 6-bit one) rounded to f16.
    Iq4Xs,
    /// GGML type 39 (gpt-oss's experts): blocks of 32, a power-of-two scale and 4-bit
    /// E2M1 values. As Q8_0: exactly, for every scale a weight has.
    Mxfp4,
}

impl Transcoded {
    pub const fn type_id(self) -> u32 {
        match self {
            Self::Iq4Nl => 20,
            Self::Iq4Xs => 23,
            Self::Mxfp4 => 39,
        }
    }

    fn from_type_id(id: u32) -> Option<Self> {
        [Self::Iq4Nl, Self::Iq4Xs, Self::Mxfp4].into_iter().find(|t| t.type_id() == id)
    }

    /// Elements per block and bytes per block.
    pub const fn block(self) -> (usize, usize) {
        match self {
            Self::Iq4Nl => (iq4::NL_BLOCK, iq4::NL_BYTES),
            Self::Iq4Xs => (iq4::XS_BLOCK, iq4::XS_BYTES),
            Self::Mxfp4 => (mxfp4::BLOCK, mxfp4::BYTES),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Iq4Nl => "IQ4_NL",
            Self::Iq4Xs => "IQ4_XS",
            Self::Mxfp4 => "MXFP4",
        }
    }

    /// The file's raw blocks as Q8_0 blocks.
    fn to_q8_0(self, raw: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Self::Iq4Nl => Ok(iq4::nl_to_q8_0(raw)),
            Self::Iq4Xs => iq4::xs_to_q8_0(raw),
            Self::Mxfp4 => mxfp4::to_q8_0(raw),
        }
    }
}

/// Where a transcoded tensor's blocks are.
#[derive(Debug, Clone)]
struct Raw {
    kind: Transcoded,
    /// From the start of the file.
    start: u64,
    bytes: usize,
}

/// A GGUF file's header.
#[derive(Debug)]
pub struct Header {
    /// Metadata and the index of every tensor; a transcoded tensor is listed as the Q8_0
    /// tensor it becomes.
    pub content: Content,
    transcoded: HashMap<String, Raw>,
}

impl Header {
    /// Reads a header; an error says what is wrong (a type we do not read is named).
    pub fn read<R: Read + Seek>(reader: &mut R) -> Result<Self, String> {
        let mut reader = BufReader::new(reader);
        read_header(&mut reader).map_err(|e| e.0)
    }

    /// Tensor `name` on `device`: as stored, or transcoded.
    pub fn tensor<R: Read + Seek>(
        &self,
        reader: &mut R,
        name: &str,
        device: &Device,
    ) -> candle_core::Result<QTensor> {
        let Some(raw) = self.transcoded.get(name) else {
            return self.content.tensor(reader, name, device);
        };
        let mut bytes = vec![0u8; raw.bytes];
        reader.seek(SeekFrom::Start(raw.start))?;
        reader.read_exact(&mut bytes).map_err(|e| {
            candle_core::Error::Msg(format!(
                "{name}: {} bytes of {} blocks: {e}",
                raw.bytes,
                raw.kind.name()
            ))
        })?;
        let q8 = raw
            .kind
            .to_q8_0(&bytes)
            .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
        let dims = self
            .content
            .tensor_infos
            .get(name)
            .map(|i| i.shape.dims().to_vec())
            .unwrap_or_default();
        ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &q8, dims, device)
    }

    /// The tensors transcoded at load, by type: for a log line or an error.
    pub fn transcoded_types(&self) -> Vec<Transcoded> {
        let mut kinds: Vec<Transcoded> = self.transcoded.values().map(|r| r.kind).collect();
        kinds.sort_by_key(|k| k.type_id());
        kinds.dedup();
        kinds
    }
}

/// A reading error (a message; `?` on io errors names the cut).
struct Bad(String);

impl From<std::io::Error> for Bad {
    fn from(e: std::io::Error) -> Self {
        Bad(format!("the file ends inside its header ({e})"))
    }
}

fn bad<T>(message: impl Into<String>) -> Result<T, Bad> {
    Err(Bad(message.into()))
}

struct Cursor<'r, R> {
    reader: &'r mut R,
    /// Lengths and dimensions are 64-bit since GGUF version 2.
    wide: bool,
    size: u64,
}

impl<R: Read + Seek> Cursor<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], Bad> {
        let mut b = [0u8; N];
        self.reader.read_exact(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, Bad> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, Bad> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn length(&mut self) -> Result<u64, Bad> {
        if self.wide { self.u64() } else { self.u32().map(u64::from) }
    }

    /// Bytes left after the position: no count may claim more.
    fn left(&mut self) -> Result<u64, Bad> {
        Ok(self.size.saturating_sub(self.reader.stream_position()?))
    }

    fn string(&mut self) -> Result<String, Bad> {
        let len = self.length()?;
        if len > MAX_STRING || len > self.left()? {
            return bad(format!("a string of {len} bytes, more than the file holds"));
        }
        let mut b = vec![0u8; len as usize];
        self.reader.read_exact(&mut b)?;
        // As candle reads them: some writers end strings with NULs, and some files carry
        // strings (tokens) that are not valid UTF-8.
        while b.last() == Some(&0) {
            b.pop();
        }
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value, Bad> {
        Ok(match kind {
            0 => Value::U8(self.bytes::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return bad(format!("arrays nested deeper than {MAX_DEPTH}"));
                }
                let item = self.u32()?;
                let len = self.length()?;
                // Every element takes at least a byte.
                if len > MAX_ELEMENTS || len > self.left()? {
                    return bad(format!("an array of {len} elements, more than the file holds"));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => return bad(format!("a metadata value of unknown type {other}")),
        })
    }
}

fn read_header<R: Read + Seek>(reader: &mut R) -> Result<Header, Bad> {
    let start = reader.stream_position()?;
    let size = reader.seek(SeekFrom::End(0))?;
    reader.seek(SeekFrom::Start(start))?;
    let mut c = Cursor { reader, wide: true, size };
    let magic = c.u32()?;
    if magic != 0x4655_4747 {
        return bad(format!("it does not start with GGUF's magic (found {magic:#010x})"));
    }
    let (magic, wide) = match c.u32()? {
        1 => (VersionedMagic::GgufV1, false),
        2 => (VersionedMagic::GgufV2, true),
        3 => (VersionedMagic::GgufV3, true),
        v => return bad(format!("GGUF version {v} (1 to 3 are read)")),
    };
    c.wide = wide;
    let tensors = c.length()?;
    let entries = c.length()?;
    // A tensor's entry takes at least 16 bytes, a metadata entry at least 9.
    let left = c.left()?;
    if tensors > MAX_ELEMENTS
        || entries > MAX_ELEMENTS
        || tensors.saturating_mul(16).saturating_add(entries.saturating_mul(9)) > left
    {
        return bad(format!(
            "{tensors} tensors and {entries} metadata entries, more than the file holds"
        ));
    }
    let mut metadata = HashMap::new();
    for _ in 0..entries {
        let key = c.string()?;
        let kind = c.u32()?;
        let value = c.value(kind, 0)?;
        metadata.insert(key, value);
    }
    let mut infos = Vec::with_capacity(tensors as usize);
    for _ in 0..tensors {
        let name = c.string()?;
        let rank = c.u32()?;
        if rank > MAX_DIMS {
            return bad(format!("tensor {name} has {rank} dimensions (at most {MAX_DIMS})"));
        }
        let mut dims = Vec::with_capacity(rank as usize);
        for _ in 0..rank {
            let d = c.length()?;
            dims.push(
                usize::try_from(d).map_err(|_| Bad(format!("tensor {name}: dimension {d}")))?,
            );
        }
        // GGUF lists the fastest dimension first.
        dims.reverse();
        let kind = c.u32()?;
        let offset = c.u64()?;
        infos.push((name, dims, kind, offset));
    }
    let position = c.reader.stream_position()?;
    let alignment = match metadata.get("general.alignment").map(Value::to_u64) {
        Some(Ok(a)) if a > 0 => a,
        _ => DEFAULT_ALIGNMENT,
    };
    let data = position.div_ceil(alignment) * alignment;
    let mut tensor_infos = HashMap::with_capacity(infos.len());
    let mut transcoded = HashMap::new();
    for (name, dims, kind, offset) in infos {
        let shape = Shape::from(dims);
        let ggml_dtype = if let Some(dtype) = candle_type(kind) {
            dtype
        } else if let Some(t) = Transcoded::from_type_id(kind) {
            let (block, block_bytes) = t.block();
            let elems = shape.elem_count();
            let rows_fit = shape.dims().last().is_some_and(|&k| k % block == 0);
            if !rows_fit {
                return bad(format!(
                    "tensor {name} ({}) has rows of {:?}, not whole blocks of {block}",
                    t.name(),
                    shape.dims().last()
                ));
            }
            let bytes = elems / block * block_bytes;
            let start = data.saturating_add(offset);
            if start.saturating_add(bytes as u64) > size {
                return bad(format!(
                    "tensor {name} needs {bytes} bytes at {start}, past the file's end"
                ));
            }
            transcoded.insert(name.clone(), Raw { kind: t, start, bytes });
            GgmlDType::Q8_0
        } else {
            return bad(unsupported_type(kind));
        };
        tensor_infos.insert(name, TensorInfo { ggml_dtype, shape, offset });
    }
    let content = Content { magic, metadata, tensor_infos, tensor_data_offset: data };
    Ok(Header { content, transcoded })
}

/// The GGML types candle reads, by id.
fn candle_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The GGML type id of a type candle reads.
pub fn ggml_type_id(dtype: GgmlDType) -> u32 {
    (0..=30).find(|&id| candle_type(id) == Some(dtype)).unwrap_or(0)
}

/// A type we neither read nor transcode: its name and what to do.
fn unsupported_type(id: u32) -> String {
    let name = match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        24..=28 => "an integer or F64 type",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        _ => "an unknown type",
    };
    format!(
        "its tensors use GGML type {id} ({name}), which is not supported yet (supported: F32, \
         F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, \
         IQ4_XS, MXFP4); requantize it (llama.cpp's llama-quantize) to one of those"
    )
}

/// One tensor to [`write`]: its blocks as stored, of GGML type `type_id`.
pub struct RawTensor {
    pub name: String,
    /// Slowest dimension first, as candle's shapes.
    pub dims: Vec<usize>,
    pub type_id: u32,
    pub bytes: Vec<u8>,
}

/// Writes a GGUF (version 3) file of `metadata` and `tensors`, each aligned to 32 bytes.
pub fn write<W: Write>(
    w: &mut W,
    metadata: &[(&str, &Value)],
    tensors: &[RawTensor],
) -> std::io::Result<()> {
    let mut header = Vec::new();
    header.extend(0x4655_4747u32.to_le_bytes());
    header.extend(3u32.to_le_bytes());
    header.extend((tensors.len() as u64).to_le_bytes());
    header.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut header, key);
        header.extend(value_type(value).to_le_bytes());
        put_value(&mut header, value);
    }
    let pad = |n: usize| n.div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize;
    let mut offset = 0usize;
    for t in tensors {
        put_string(&mut header, &t.name);
        header.extend((t.dims.len() as u32).to_le_bytes());
        for d in t.dims.iter().rev() {
            header.extend((*d as u64).to_le_bytes());
        }
        header.extend(t.type_id.to_le_bytes());
        header.extend((offset as u64).to_le_bytes());
        offset += pad(t.bytes.len());
    }
    header.resize(pad(header.len()), 0);
    w.write_all(&header)?;
    for t in tensors {
        w.write_all(&t.bytes)?;
        w.write_all(&vec![0u8; pad(t.bytes.len()) - t.bytes.len()])?;
    }
    Ok(())
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array's element type is not known; any will do.
            out.extend(items.first().map_or(0, value_type).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `metadata` and one IQ4_NL tensor, written by [`write`].
    fn file(metadata: &[(&str, &Value)]) -> Vec<u8> {
        let values: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
        let blocks = iq4::quantize_nl(&values);
        let tensor = RawTensor { name: "w".into(), dims: vec![2, 32], type_id: 20, bytes: blocks };
        let mut out = Vec::new();
        write(&mut out, metadata, &[tensor]).expect("written to memory");
        out
    }

    #[test]
    fn strings_read_as_candle_reads_them() {
        // Trailing NULs dropped; bytes that are not UTF-8 as U+FFFD, not an error (files with
        // such tokens exist).
        let name = Value::String("tiny\0\0".into());
        let token = Value::String("abX".into());
        let mut bytes = file(&[("general.name", &name), ("token", &token)]);
        let at = bytes.windows(3).position(|w| w == b"abX").expect("the token");
        bytes[at + 2] = 0xFF;
        let header = Header::read(&mut std::io::Cursor::new(bytes)).expect("a header");
        let md = &header.content.metadata;
        assert_eq!(
            md.get("general.name").and_then(|v| v.to_string().ok()).map(String::as_str),
            Some("tiny")
        );
        assert_eq!(
            md.get("token").and_then(|v| v.to_string().ok()).map(String::as_str),
            Some("ab\u{FFFD}")
        );
    }

    #[test]
    fn a_transcoded_tensor_reads_as_q8_0_and_a_cut_file_is_refused() {
        let bytes = file(&[]);
        let header = Header::read(&mut std::io::Cursor::new(bytes.clone())).expect("a header");
        assert_eq!(header.transcoded_types(), [Transcoded::Iq4Nl]);
        let w =
            header.tensor(&mut std::io::Cursor::new(bytes.clone()), "w", &Device::Cpu).expect("w");
        assert_eq!((w.dtype(), w.shape().dims()), (GgmlDType::Q8_0, &[2, 32][..]));
        // 36 bytes of blocks and 28 of padding: cut into the blocks.
        let cut = bytes[..bytes.len() - 40].to_vec();
        let e = Header::read(&mut std::io::Cursor::new(cut)).expect_err("a cut file");
        assert!(e.contains("past the file's end"), "{e}");
    }
}
