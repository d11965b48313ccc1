//! Layout detection: which Parquet leaf columns hold the image bytes and the caption.
//!
//! Two layouts exist in the wild: Hugging Face `datasets` stores images as `struct<bytes, path>`, and
//! img2dataset-style shards store the encoded image in a plain binary column (`jpg`, `png`, ...). We
//! resolve the mapping per shard from its Parquet schema, then read only the `bytes` leaf and the caption
//! leaf, so neither the `path` strings nor any other column (e.g. `meta`, `url`) is ever decoded.
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ProjectionMask;
use parquet::schema::types::SchemaDescriptor;
use serde::{Deserialize, Serialize};

/// Names auto-detection tries for the image column, in order of preference.
pub const IMAGE_COLUMN_NAMES: &[&str] = &["image", "jpg", "png", "webp", "img"];
/// Names auto-detection tries for the caption column, in order of preference.
pub const CAPTION_COLUMN_NAMES: &[&str] = &["caption", "text", "txt", "alt"];

/// How the image is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageLayout {
    /// Hugging Face `datasets`: `struct<bytes: binary, path: string>`.
    HfStruct,
    /// A plain `binary` / `large_binary` / `binary_view` column holding the encoded image.
    Binary,
}

/// Which columns to read; every `None` is auto-detected from the schema.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ColumnMapping {
    pub image: Option<String>,
    pub caption: Option<String>,
    pub layout: Option<ImageLayout>,
}

/// The mapping resolved against one shard's schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedColumns {
    pub image: String,
    pub caption: String,
    pub layout: ImageLayout,
    /// Whether the caption is stored as binary (validated as UTF-8 row by row).
    pub caption_is_binary: bool,
}

impl std::fmt::Display for ResolvedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layout = match self.layout {
            ImageLayout::HfStruct => "struct<bytes, path>",
            ImageLayout::Binary => "binary",
        };
        let caption = if self.caption_is_binary {
            "binary (UTF-8 checked)"
        } else {
            "string"
        };
        write!(
            f,
            "image = `{}` ({layout}), caption = `{}` ({caption})",
            self.image, self.caption
        )
    }
}

fn is_binary(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn image_layout_of(field: &Field) -> Option<ImageLayout> {
    match field.data_type() {
        dt if is_binary(dt) => Some(ImageLayout::Binary),
        DataType::Struct(children) => children
            .iter()
            .any(|c| c.name() == "bytes" && is_binary(c.data_type()))
            .then_some(ImageLayout::HfStruct),
        _ => None,
    }
}

/// A readable list of the columns and their types, for error messages.
pub fn describe_columns(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ColumnMapping {
    /// Resolve against an Arrow schema. The error text lists the columns found, so the user can pass
    /// the right names as overrides.
    pub fn resolve(&self, schema: &Schema) -> Result<ResolvedColumns, String> {
        let found = || format!("columns found: {}", describe_columns(schema));
        let (image, layout) = match &self.image {
            Some(name) => {
                let field = schema
                    .field_with_name(name)
                    .map_err(|_| format!("image column `{name}` not found; {}", found()))?;
                let detected = image_layout_of(field).ok_or_else(|| {
                    format!(
                        "image column `{name}` has type {}, expected binary or struct<bytes: binary, path: string>",
                        field.data_type()
                    )
                })?;
                if let Some(want) = self.layout
                    && want != detected
                {
                    return Err(format!(
                        "image column `{name}` has type {}, which does not match the requested layout {want:?}",
                        field.data_type()
                    ));
                }
                (name.clone(), detected)
            }
            None => IMAGE_COLUMN_NAMES
                .iter()
                .filter_map(|n| schema.field_with_name(n).ok())
                .find_map(|f| {
                    let l = image_layout_of(f)?;
                    (self.layout.is_none() || self.layout == Some(l)).then(|| (f.name().clone(), l))
                })
                .ok_or_else(|| {
                    format!(
                        "no image column: expected one of {IMAGE_COLUMN_NAMES:?} (binary or struct<bytes, path>) or an explicit image column; {}",
                        found()
                    )
                })?,
        };
        let caption_ok = |f: &Field| is_string(f.data_type()) || is_binary(f.data_type());
        let caption_field = match &self.caption {
            Some(name) => {
                let f = schema
                    .field_with_name(name)
                    .map_err(|_| format!("caption column `{name}` not found; {}", found()))?;
                if !caption_ok(f) {
                    return Err(format!(
                        "caption column `{name}` has type {}, expected string or binary",
                        f.data_type()
                    ));
                }
                f
            }
            None => CAPTION_COLUMN_NAMES
                .iter()
                .filter_map(|n| schema.field_with_name(n).ok())
                .find(|f| caption_ok(f))
                .ok_or_else(|| {
                    format!(
                        "no caption column: expected one of {CAPTION_COLUMN_NAMES:?} (string) or an explicit caption column; {}",
                        found()
                    )
                })?,
        };
        Ok(ResolvedColumns {
            image,
            caption: caption_field.name().clone(),
            layout,
            caption_is_binary: is_binary(caption_field.data_type()),
        })
    }
}

impl ResolvedColumns {
    /// A projection of just the image-bytes leaf and the caption leaf.
    pub fn projection(&self, descr: &SchemaDescriptor) -> Result<ProjectionMask, String> {
        let image_path: Vec<&str> = match self.layout {
            ImageLayout::HfStruct => vec![&self.image, "bytes"],
            ImageLayout::Binary => vec![&self.image],
        };
        let find = |want: &[&str]| {
            descr
                .columns()
                .iter()
                .position(|c| {
                    c.path()
                        .parts()
                        .iter()
                        .map(String::as_str)
                        .eq(want.iter().copied())
                })
                .ok_or_else(|| format!("Parquet leaf column `{}` not found", want.join(".")))
        };
        let image = find(&image_path)?;
        let caption = find(&[&self.caption])?;
        Ok(ProjectionMask::leaves(descr, [image, caption]))
    }
}
