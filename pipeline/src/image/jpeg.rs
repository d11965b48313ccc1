//! JPEG through libjpeg-turbo's TurboJPEG 3 API (via `turbojpeg-sys`), plus an EXIF orientation reader.
//!
//! We call the C API directly rather than through the `turbojpeg` crate because we need TurboJPEG's
//! error *code*: a warning (`TJERR_WARNING`, e.g. "Premature end of JPEG file" on a truncated file, or
//! "extraneous bytes before marker") still fills the whole output buffer, and the policy for each is
//! ours to choose (see [`decode_rgb`]).
use std::cell::RefCell;
use std::ffi::CStr;
use std::os::raw::c_int;
use turbojpeg_sys as tj;

/// A TurboJPEG decompressor handle. Not shareable between threads; one lives in each worker's TLS.
struct Handle(tj::tjhandle);

impl Handle {
    fn new() -> Option<Self> {
        // SAFETY: tj3Init has no preconditions; a null return is checked.
        let h = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if h.is_null() { None } else { Some(Self(h)) }
    }

    fn error(&self) -> JpegError {
        // SAFETY: the handle is valid; TurboJPEG returns a pointer to a NUL-terminated static/handle
        // buffer that we copy immediately.
        let (code, msg) = unsafe {
            let code = tj::tj3GetErrorCode(self.0);
            let msg = CStr::from_ptr(tj::tj3GetErrorStr(self.0))
                .to_string_lossy()
                .into_owned();
            (code, msg)
        };
        if code == tj::TJERR_TJERR_WARNING as c_int {
            JpegError::Warning(msg)
        } else {
            JpegError::Fatal(msg)
        }
    }

    /// After a call that returned `rc`: `Ok(None)` on success, `Ok(Some(message))` for a warning
    /// (the output is complete), the error otherwise.
    fn warning_unless_fatal(&self, rc: c_int) -> Result<Option<String>, JpegError> {
        match rc {
            0 => Ok(None),
            _ => match self.error() {
                JpegError::Warning(m) => Ok(Some(m)),
                fatal => Err(fatal),
            },
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed exactly once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

#[derive(Debug)]
pub(crate) enum JpegError {
    /// Non-fatal: the output buffer holds a complete image (possibly with grey filler where data ran out).
    Warning(String),
    Fatal(String),
}

impl JpegError {
    pub(crate) fn message(&self) -> &str {
        match self {
            JpegError::Warning(m) | JpegError::Fatal(m) => m,
        }
    }
}

/// What the header says; read before any pixel buffer exists.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JpegHeader {
    pub width: u32,
    pub height: u32,
    /// CMYK/YCCK files cannot be converted to RGB by TurboJPEG; the caller decodes those another way.
    pub is_cmyk: bool,
    /// Sample precision other than 8 bits (12-bit, lossless 16-bit) needs another decoder too.
    pub is_8bit: bool,
    /// Pixels per chroma sample `(x, y)` when the file's Y/Cb/Cr (or grey) planes can be decoded
    /// as they are stored (see [`decode_planes`]); `None` for other colour spaces or sampling layouts.
    pub planar: Option<Sampling>,
    /// TurboJPEG's `TJSAMP` code.
    subsamp: c_int,
}

/// How a planar-decodable JPEG stores its components.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sampling {
    Grey,
    /// Y at full resolution, Cb and Cr at one sample per `x * y` block of pixels.
    YCbCr {
        x: usize,
        y: usize,
    },
}

fn with_handle<T>(f: impl FnOnce(&Handle) -> Result<T, JpegError>) -> Result<T, JpegError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Handle::new().ok_or_else(|| JpegError::Fatal("tj3Init failed".into()))?);
        }
        f(slot.as_ref().expect("initialised above"))
    })
}

/// Parse the header (dimensions, colour space, precision).
pub(crate) fn read_header(bytes: &[u8]) -> Result<JpegHeader, JpegError> {
    with_handle(|h| {
        // SAFETY: `bytes` is a valid slice for the duration of the call.
        let rc = unsafe { tj::tj3DecompressHeader(h.0, bytes.as_ptr(), bytes.len() as _) };
        if rc != 0 {
            return Err(h.error());
        }
        // SAFETY: plain getters on a valid handle.
        let get = |p: tj::TJPARAM| unsafe { tj::tj3Get(h.0, p as c_int) };
        let (w, hgt) = (
            get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
            get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        if w <= 0 || hgt <= 0 {
            return Err(JpegError::Fatal(format!(
                "invalid JPEG dimensions {w}x{hgt}"
            )));
        }
        let cs = get(tj::TJPARAM_TJPARAM_COLORSPACE);
        let precision = get(tj::TJPARAM_TJPARAM_PRECISION);
        let subsamp = get(tj::TJPARAM_TJPARAM_SUBSAMP);
        // TurboJPEG's MCU sizes: luma pixels per chroma sample for each sampling layout.
        let blocks = match subsamp as tj::TJSAMP {
            tj::TJSAMP_TJSAMP_444 => Some((1, 1)),
            tj::TJSAMP_TJSAMP_422 => Some((2, 1)),
            tj::TJSAMP_TJSAMP_420 => Some((2, 2)),
            tj::TJSAMP_TJSAMP_440 => Some((1, 2)),
            tj::TJSAMP_TJSAMP_411 => Some((4, 1)),
            tj::TJSAMP_TJSAMP_441 => Some((1, 4)),
            _ => None,
        };
        let planar = match cs as tj::TJCS {
            _ if precision != 8 => None,
            tj::TJCS_TJCS_GRAY if subsamp == tj::TJSAMP_TJSAMP_GRAY as c_int => {
                Some(Sampling::Grey)
            }
            tj::TJCS_TJCS_YCbCr => blocks.map(|(x, y)| Sampling::YCbCr { x, y }),
            _ => None,
        };
        Ok(JpegHeader {
            width: w as u32,
            height: hgt as u32,
            is_cmyk: cs == tj::TJCS_TJCS_CMYK as c_int || cs == tj::TJCS_TJCS_YCCK as c_int,
            is_8bit: precision == 8,
            planar,
            subsamp,
        })
    })
}

/// Decode to packed RGB8 (grey is replicated). Returns the pixels and, separately, a warning if
/// TurboJPEG raised one: the pixels are complete either way and the caller decides what a warning means.
pub(crate) fn decode_rgb(
    bytes: &[u8],
    header: &JpegHeader,
) -> Result<(Vec<u8>, Option<String>), JpegError> {
    with_handle(|h| {
        let (w, hgt) = (header.width as usize, header.height as usize);
        let len = w * hgt * 3;
        // Not zero-initialised: TurboJPEG writes every byte, and the length is only set once it has.
        let mut out: Vec<u8> = Vec::with_capacity(len);
        // SAFETY: `out` has capacity for exactly height rows of `pitch = 3 * width` bytes, the size
        // TurboJPEG writes for TJPF_RGB at scaling 1/1 (the default) for the header read from these bytes.
        let rc = unsafe {
            tj::tj3Decompress8(
                h.0,
                bytes.as_ptr(),
                bytes.len() as _,
                out.as_mut_ptr(),
                (w * 3) as c_int,
                tj::TJPF_TJPF_RGB as c_int,
            )
        };
        let warning = h.warning_unless_fatal(rc)?;
        // SAFETY: success or a non-fatal warning means libjpeg ran the scanline loop to the last row
        // (missing data is filled in, never skipped), so all `len` bytes are initialised.
        unsafe { out.set_len(len) };
        Ok((out, warning))
    })
}

/// One component as stored in the file: `width x height` samples, rows `stride` bytes apart.
pub(crate) struct RawPlane {
    pub data: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub stride: usize,
}

/// Decode the components as they are stored (Y, Cb, Cr, or grey alone): no chroma upsampling and no
/// colour conversion. `header.planar` must be `Some`. A plane may have padding columns and rows past
/// its `width x height` (TurboJPEG rounds the luma plane up to whole chroma blocks); warnings are
/// returned as by [`decode_rgb`].
pub(crate) fn decode_planes(
    bytes: &[u8],
    header: &JpegHeader,
) -> Result<(Vec<RawPlane>, Option<String>), JpegError> {
    let sampling = header
        .planar
        .ok_or_else(|| JpegError::Fatal("not a planar-decodable JPEG".into()))?;
    let (w, h) = (header.width as usize, header.height as usize);
    let (components, (bx, by)) = match sampling {
        Sampling::Grey => (1, (1, 1)),
        Sampling::YCbCr { x, y } => (3, (x, y)),
    };
    let mut planes = Vec::with_capacity(components);
    let mut lens = Vec::with_capacity(components);
    for c in 0..components as c_int {
        // SAFETY: pure functions of their arguments.
        let (pw, ph) = unsafe {
            (
                tj::tj3YUVPlaneWidth(c, w as c_int, header.subsamp),
                tj::tj3YUVPlaneHeight(c, h as c_int, header.subsamp),
            )
        };
        let (width, height) = if c == 0 {
            (w, h)
        } else {
            (w.div_ceil(bx), h.div_ceil(by))
        };
        if pw < width as c_int || ph < height as c_int {
            return Err(JpegError::Fatal(format!(
                "unexpected plane {c} size {pw}x{ph} for a {w}x{h} image"
            )));
        }
        lens.push(pw as usize * ph as usize);
        planes.push(RawPlane {
            data: Vec::with_capacity(pw as usize * ph as usize),
            width,
            height,
            stride: pw as usize,
        });
    }
    with_handle(|hd| {
        let mut ptrs: Vec<*mut u8> = planes.iter_mut().map(|p| p.data.as_mut_ptr()).collect();
        let mut strides: Vec<c_int> = planes.iter().map(|p| p.stride as c_int).collect();
        // SAFETY: plane `c` has capacity for tj3YUVPlaneWidth x tj3YUVPlaneHeight bytes, the size
        // TurboJPEG writes for this header's dimensions and sampling, with rows that far apart.
        let rc = unsafe {
            tj::tj3DecompressToYUVPlanes8(
                hd.0,
                bytes.as_ptr(),
                bytes.len() as _,
                ptrs.as_mut_ptr(),
                strides.as_mut_ptr(),
            )
        };
        let warning = hd.warning_unless_fatal(rc)?;
        for (p, &len) in planes.iter_mut().zip(&lens) {
            // SAFETY: as for `decode_rgb`, a success or a warning means every row was written.
            unsafe { p.data.set_len(len) };
        }
        Ok(warning)
    })
    .map(|warning| (planes, warning))
}

/// EXIF orientation (1..=8) from a JPEG's APP1 `Exif` segment, if present and well formed.
/// Walks the marker segments up to the start of scan; never reads past the slice.
pub(crate) fn exif_orientation(bytes: &[u8]) -> Option<u16> {
    let mut pos = 2; // after SOI
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            return None;
        }
        let marker = bytes[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return None; // start of scan / end of image: no more metadata
        }
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        if len < 2 {
            return None;
        }
        let seg = bytes.get(pos + 4..pos + 2 + len)?;
        if marker == 0xE1 && seg.starts_with(b"Exif\0\0") {
            return tiff_orientation(&seg[6..]);
        }
        pos += 2 + len;
    }
    None
}

/// Orientation tag (0x0112) from IFD0 of a TIFF structure (the body of an EXIF block).
pub(crate) fn tiff_orientation(tiff: &[u8]) -> Option<u16> {
    let le = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(o..o + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    if u16_at(2)? != 42 {
        return None;
    }
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    for i in 0..count {
        let entry = ifd + 2 + 12 * i;
        if u16_at(entry)? == 0x0112 {
            // Type SHORT, count 1: the value sits in the first two bytes of the value field.
            let v = u16_at(entry + 8)?;
            return (1..=8).contains(&v).then_some(v);
        }
    }
    None
}
