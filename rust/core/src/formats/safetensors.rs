//! The safetensors format: an 8-byte little-endian header length, a UTF-8 JSON
//! header `{name: {dtype, shape, data_offsets}, "__metadata__": {..}}`, then the
//! data section. Loading maps the file once and hands out zero-copy tensors
//! over it; every field is validated before it is trusted, and a violation is a
//! `Error::Weights` naming the file and the tensor.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::storage::{AlignedBuffer, Storage};
use crate::tensor::Tensor;

/// Largest header accepted, as in the reference implementation.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor's entry in the header, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub begin: usize,
    pub end: usize,
}

/// A parsed, validated header.
#[derive(Clone, Debug, Default)]
pub struct Header {
    /// Entries in data order (sorted by offset).
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    /// Offset of the data section from the start of the file.
    pub data_start: usize,
}

/// The tensors of a file, in data order, plus its `__metadata__`.
pub struct Loaded {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: BTreeMap<String, String>,
}

/// JSON object entries in file order, keeping duplicates so they can be refused.
struct Entries(Vec<(String, serde_json::Value)>);

/// A JSON value whose objects (at any depth) must not repeat a key: with
/// last-wins parsing, an invalid first value could hide behind a valid one.
struct StrictValue(serde_json::Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<StrictValue, E> {
                Ok(StrictValue(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<StrictValue, E> {
                Ok(StrictValue(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<StrictValue, E> {
                Ok(StrictValue(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<StrictValue, E> {
                Ok(StrictValue(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<StrictValue, E> {
                Ok(StrictValue(v.into()))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<StrictValue, E> {
                Ok(StrictValue(v.into()))
            }
            fn visit_unit<E>(self) -> std::result::Result<StrictValue, E> {
                Ok(StrictValue(serde_json::Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<StrictValue, A::Error> {
                let mut out = Vec::new();
                while let Some(StrictValue(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(StrictValue(out.into()))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<StrictValue, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, StrictValue(v))) = map.next_entry::<String, StrictValue>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key '{k}'")));
                    }
                    out.insert(k, v);
                }
                Ok(StrictValue(out.into()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    let StrictValue(v) = map.next_value().map_err(|e: A::Error| {
                        serde::de::Error::custom(format!("entry '{k}': {e}"))
                    })?;
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Parses and validates the header of a file of `file_len` bytes whose first
/// bytes are `prefix` (at least the 8-byte length plus the header). `file` is
/// only used in messages.
pub fn parse_header(file: &Path, prefix: &[u8], file_len: u64) -> Result<Header> {
    let err = |tensor: Option<&str>, detail: String| Error::weights(file, tensor, detail);
    if file_len < 8 {
        return Err(err(
            None,
            format!("file is {file_len} bytes, too small for the 8-byte header length"),
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&prefix[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(err(
            None,
            format!("header length {header_len} exceeds the limit of {MAX_HEADER_BYTES} bytes"),
        ));
    }
    if header_len == 0 {
        return Err(err(
            None,
            "header length is 0; a header is at least '{}'".into(),
        ));
    }
    if 8 + header_len > file_len {
        return Err(err(
            None,
            format!("header length {header_len} runs past the end of the file ({file_len} bytes)"),
        ));
    }
    let data_start = 8 + header_len as usize;
    let data_len = (file_len - data_start as u64) as usize;
    let text = std::str::from_utf8(&prefix[8..data_start])
        .map_err(|e| err(None, format!("header is not valid UTF-8: {e}")))?;
    let entries: Entries = serde_json::from_str(text)
        .map_err(|e| err(None, format!("header is not a valid JSON object: {e}")))?;

    let mut seen = HashSet::new();
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(err(
                Some(&name),
                "name appears more than once in the header".into(),
            ));
        }
        if name == "__metadata__" {
            if value.is_null() {
                continue; // the reference implementation accepts an explicit null
            }
            let map = value
                .as_object()
                .ok_or_else(|| err(None, "__metadata__ must be an object of strings".into()))?;
            for (k, v) in map {
                let s = v.as_str().ok_or_else(|| {
                    err(
                        None,
                        format!("__metadata__ value for '{k}' is not a string: {v}"),
                    )
                })?;
                metadata.insert(k.clone(), s.to_owned());
            }
            continue;
        }
        let raw: RawEntry = serde_json::from_value(value)
            .map_err(|e| err(Some(&name), format!("invalid entry: {e}")))?;
        let dtype = DType::from_safetensors_name(&raw.dtype).ok_or_else(|| {
            err(
                Some(&name),
                format!(
                    "unsupported dtype '{}' (rtserve reads {})",
                    raw.dtype,
                    DType::ALL.map(|d| d.safetensors_name()).join(", ")
                ),
            )
        })?;
        let (begin, end) = raw.data_offsets;
        if begin > end {
            return Err(err(
                Some(&name),
                format!("data_offsets [{begin}, {end}] are reversed"),
            ));
        }
        let expected = raw
            .shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| err(Some(&name), format!("shape {:?} overflows", raw.shape)))?;
        if expected != end - begin {
            return Err(err(
                Some(&name),
                format!(
                    "shape {:?} of {} needs {expected} bytes but data_offsets [{begin}, {end}] hold {}",
                    raw.shape,
                    dtype,
                    end - begin
                ),
            ));
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape: raw.shape,
            begin,
            end,
        });
    }

    // The data section must be covered exactly: no overlap, no gap, nothing past the end.
    tensors.sort_by_key(|t| (t.begin, t.end));
    let mut cursor = 0usize;
    for t in &tensors {
        if t.begin < cursor {
            return Err(err(
                Some(&t.name),
                format!(
                    "data [{}, {}) overlaps the previous tensor (which ends at {cursor})",
                    t.begin, t.end
                ),
            ));
        }
        if t.begin > cursor {
            return Err(err(
                Some(&t.name),
                format!(
                    "gap of {} bytes before this tensor's data at {}",
                    t.begin - cursor,
                    t.begin
                ),
            ));
        }
        if t.end > data_len {
            return Err(err(
                Some(&t.name),
                format!("data [{}, {}) runs past the data section of {data_len} bytes (file truncated?)", t.begin, t.end),
            ));
        }
        cursor = t.end;
    }
    if cursor != data_len {
        return Err(err(
            None,
            format!("{} trailing bytes after the last tensor (data section is {data_len} bytes, tensors cover {cursor})", data_len - cursor),
        ));
    }
    Ok(Header {
        tensors,
        metadata,
        data_start,
    })
}

/// Maps `path` and returns zero-copy tensors over it (copies only tensors whose
/// data is misaligned for their dtype).
pub fn load(path: &Path) -> Result<Loaded> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len < 8 {
        return Err(Error::weights(
            path,
            None,
            format!("file is {file_len} bytes, too small for the 8-byte header length"),
        ));
    }
    // SAFETY: the map is read-only (PROT_READ) and private to this process; the
    // file changing underneath us is outside what any mmap-based loader can
    // prevent and is documented for users.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let map = Arc::new(map);
    if map.len() as u64 != file_len {
        return Err(Error::weights(
            path,
            None,
            "file changed size while being mapped",
        ));
    }
    let header = parse_header(path, &map[..], file_len)?;
    let mut tensors = Vec::with_capacity(header.tensors.len());
    for info in header.tensors {
        let start = header.data_start + info.begin;
        let len = info.end - info.begin;
        let aligned = (map.as_ptr() as usize + start).is_multiple_of(info.dtype.size());
        let storage = if aligned {
            Storage::mmap(map.clone(), start, len)?
        } else {
            Storage::owned_read_only(AlignedBuffer::from_bytes(&map[start..start + len])?)
        };
        let tensor = Tensor::from_storage(Arc::new(storage), info.dtype, &info.shape)
            .map_err(|e| Error::weights(path, Some(&info.name), e.to_string()))?;
        tensors.push((info.name, tensor));
    }
    Ok(Loaded {
        tensors,
        metadata: header.metadata,
    })
}

/// Writes `tensors` to `path` (atomically: a temporary file renamed into place).
/// Tensors are laid out largest dtype first so every one is aligned for its
/// dtype when the file is mapped again.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let mut order: Vec<&(String, Tensor)> = tensors.iter().collect();
    let mut names = HashSet::new();
    for (name, _) in &order {
        if name == "__metadata__" {
            return Err(Error::weights(
                path,
                Some(name),
                "'__metadata__' is reserved and cannot name a tensor",
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(Error::weights(path, Some(name), "tensor name given twice"));
        }
    }
    order.sort_by(|a, b| {
        b.1.dtype()
            .size()
            .cmp(&a.1.dtype().size())
            .then_with(|| a.0.cmp(&b.0))
    });

    let mut header = serde_json::Map::new();
    if let Some(meta) = metadata {
        let m: serde_json::Map<String, serde_json::Value> = meta
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, t) in &order {
        let end = offset + t.nbytes();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": t.dtype().safetensors_name(),
                "shape": t.shape(),
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&header)
        .map_err(|e| Error::Internal(format!("serialising safetensors header: {e}")))?;
    // Pad so the data section starts 8-byte aligned (as the reference writer does).
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weights".into());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        out.write_all(&(text.len() as u64).to_le_bytes())?;
        out.write_all(text.as_bytes())?;
        for (name, t) in &order {
            let bytes = t
                .contiguous_bytes()
                .map_err(|e| std::io::Error::other(format!("tensor '{name}': {e}")))?;
            out.write_all(&bytes)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn parse(bytes: &[u8]) -> Result<Header> {
        parse_header(Path::new("t.safetensors"), bytes, bytes.len() as u64)
    }

    #[test]
    fn valid_header() {
        let b = file_bytes(
            r#"{"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":"v"}}"#,
            &[0; 6],
        );
        let h = parse(&b).unwrap();
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.metadata["k"], "v");
    }

    #[test]
    fn corruptions_are_weights_errors() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("huge header", {
                let mut v = u64::MAX.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            }),
            ("bad json", file_bytes("{\"a\":", &[])),
            ("not object", file_bytes("[1,2]", &[])),
            (
                "unknown dtype",
                file_bytes(
                    r#"{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}}"#,
                    &[0],
                ),
            ),
            (
                "size mismatch",
                file_bytes(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                    &[0; 4],
                ),
            ),
            (
                "past eof",
                file_bytes(
                    r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#,
                    &[0; 4],
                ),
            ),
            (
                "overlap",
                file_bytes(
                    r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#,
                    &[0; 3],
                ),
            ),
            (
                "gap",
                file_bytes(
                    r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
                    &[0; 2],
                ),
            ),
            (
                "duplicate",
                file_bytes(
                    r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                    &[0; 1],
                ),
            ),
            (
                "negative dim",
                file_bytes(
                    r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
                    &[0; 1],
                ),
            ),
            (
                "overflowing shape",
                file_bytes(
                    r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#,
                    &[],
                ),
            ),
        ];
        for (what, bytes) in cases {
            match parse(&bytes) {
                Err(Error::Weights { .. }) => {}
                other => panic!("{what}: expected a weights error, got {other:?}"),
            }
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25], &[3]).unwrap();
        let b = Tensor::from_slice(&[7u8], &[1, 1]).unwrap();
        let c = Tensor::from_slice(&[1i64, 2, 3, 4], &[2, 2]).unwrap().t();
        let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        save(
            &path,
            &[("b".into(), b), ("a".into(), a), ("c".into(), c)],
            Some(&meta),
        )
        .unwrap();
        let loaded = load(&path).unwrap();
        let names: Vec<&str> = loaded.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(
            loaded.tensors[0].1.elements::<i64>().unwrap(),
            vec![1, 3, 2, 4]
        );
        assert_eq!(loaded.tensors[1].1.storage().kind_name(), "mmap");
        assert_eq!(loaded.metadata, meta);
    }
}
