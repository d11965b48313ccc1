//! Synthetic scenes: coloured shapes in groups, their raster image and a caption that describes them.
//!
//! A scene is a few groups; every object of a group shares shape, colour and size, so the caption can
//! name each group exactly ("two small red circles"). Groups sit in separate regions (top/bottom halves
//! or left-to-right strips) so spatial words in the caption ("above", "to the left of") are true by
//! construction. The structured scene is stored next to the image as JSON for evaluation and probes.
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
}

pub const SHAPES: [Shape; 4] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Diamond,
];

impl Shape {
    pub fn name(self, count: u32) -> &'static str {
        match (self, count == 1) {
            (Shape::Circle, true) => "circle",
            (Shape::Circle, false) => "circles",
            (Shape::Square, true) => "square",
            (Shape::Square, false) => "squares",
            (Shape::Triangle, true) => "triangle",
            (Shape::Triangle, false) => "triangles",
            (Shape::Diamond, true) => "diamond",
            (Shape::Diamond, false) => "diamonds",
        }
    }

    /// Whether the point `(dx, dy)` (relative to the centre, in units of the half-size) is inside.
    fn contains(self, dx: f32, dy: f32) -> bool {
        match self {
            Shape::Circle => dx * dx + dy * dy <= 1.0,
            Shape::Square => dx.abs() <= 1.0 && dy.abs() <= 1.0,
            Shape::Diamond => dx.abs() + dy.abs() <= 1.0,
            // Apex up: the half-width grows from 0 at the top to 1 at the bottom.
            Shape::Triangle => (-1.0..=1.0).contains(&dy) && dx.abs() <= (dy + 1.0) / 2.0,
        }
    }
}

/// Named object colours (saturated, far from the neutral backgrounds).
pub const COLOURS: &[(&str, [u8; 3])] = &[
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [240, 210, 40]),
    ("orange", [245, 140, 30]),
    ("purple", [140, 60, 190]),
    ("white", [250, 250, 250]),
    ("black", [20, 20, 20]),
];

const BACKGROUNDS: &[(&str, [u8; 3])] = &[
    ("light gray", [200, 200, 200]),
    ("dark gray", [70, 70, 70]),
    ("beige", [225, 215, 190]),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Small,
    Large,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Texture {
    Plain,
    Noise,
    Gradient,
}

/// Where the groups are: one group anywhere, two stacked (first above second), or left to right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Single,
    Vertical,
    Horizontal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Centre in pixels.
    pub x: f32,
    pub y: f32,
    /// Side length / diameter in pixels.
    pub size_px: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub shape: Shape,
    pub colour: String,
    pub rgb: [u8; 3],
    pub size: Size,
    pub count: u32,
    pub objects: Vec<Object>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Background {
    pub colour: String,
    pub rgb: [u8; 3],
    pub texture: Texture,
}

/// The structured description of one image, stored as the `meta` column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub background: Background,
    pub layout: Layout,
    pub groups: Vec<Group>,
    /// `jpeg` or `png`.
    pub format: String,
}

pub fn count_word(n: u32) -> &'static str {
    ["no", "a", "two", "three", "four", "five", "six"][n.min(6) as usize]
}

impl Group {
    /// "two small red circles", "a large blue square".
    pub fn phrase(&self) -> String {
        let size = match self.size {
            Size::Small => "small",
            Size::Large => "large",
        };
        format!(
            "{} {size} {} {}",
            count_word(self.count),
            self.colour,
            self.shape.name(self.count)
        )
    }
}

impl Scene {
    /// The caption: every group with its count, size, colour and shape, and where the groups are.
    pub fn caption(&self) -> String {
        let g: Vec<String> = self.groups.iter().map(Group::phrase).collect();
        let bg = format!("on a {} background", self.background.colour);
        match (self.layout, g.as_slice()) {
            (Layout::Vertical, [a, b]) => format!("{a} above {b}"),
            (Layout::Horizontal, [a, b]) => format!("{a} to the left of {b}"),
            (Layout::Horizontal, [a, b, c]) => format!("{a}, {b} and {c} from left to right"),
            (_, [a]) => format!("{a} {bg}"),
            _ => g.join(" and "),
        }
    }
}

fn pick<T: Copy>(rng: &mut impl RngCore, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// Sample a scene of the given size.
pub fn sample_scene(rng: &mut impl RngCore, width: u32, height: u32, png: bool) -> Scene {
    let (bg_name, bg_rgb) = pick(rng, BACKGROUNDS);
    let texture = pick(
        rng,
        &[
            Texture::Plain,
            Texture::Plain,
            Texture::Noise,
            Texture::Gradient,
        ],
    );
    let n_groups = pick(rng, &[1u32, 1, 2, 2, 3]);
    let layout = match n_groups {
        1 => Layout::Single,
        2 if rng.random_bool(0.5) => Layout::Vertical,
        _ => Layout::Horizontal,
    };
    let (w, h) = (width as f32, height as f32);
    let regions: Vec<(f32, f32, f32, f32)> = match layout {
        Layout::Single => vec![(0.0, 0.0, w, h)],
        Layout::Vertical => vec![(0.0, 0.0, w, h / 2.0), (0.0, h / 2.0, w, h / 2.0)],
        Layout::Horizontal => {
            let n = n_groups as f32;
            (0..n_groups)
                .map(|i| (w * i as f32 / n, 0.0, w / n, h))
                .collect()
        }
    };
    let min_side = w.min(h);
    // Objects must stand out from the background: no white on light, no black on dark backgrounds.
    let usable: Vec<(&str, [u8; 3])> = COLOURS
        .iter()
        .copied()
        .filter(|(name, _)| {
            !(bg_rgb[0] > 150 && *name == "white" || bg_rgb[0] < 100 && *name == "black")
        })
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    for &(rx, ry, rw, rh) in &regions {
        // Distinct (shape, colour) per group keeps every caption unambiguous.
        let (shape, (colour, rgb)) = loop {
            let s = pick(rng, &SHAPES);
            let c = pick(rng, &usable);
            if !groups.iter().any(|g| g.shape == s && g.colour == c.0) {
                break (s, c);
            }
        };
        let size = if rng.random_bool(0.5) {
            Size::Small
        } else {
            Size::Large
        };
        let frac = match size {
            Size::Small => rng.random_range(0.08..0.12),
            Size::Large => rng.random_range(0.20..0.26),
        };
        let min_px = match size {
            Size::Small => 3.0,
            Size::Large => 7.0,
        };
        let mut s = (min_side * frac).max(min_px);
        // Non-overlapping placement: each object gets its own cell of a grid over the region.
        let mut cell = s * 1.2;
        if cell > rw.min(rh) {
            cell = rw.min(rh);
            s = cell / 1.2;
        }
        let (cols, rows) = ((rw / cell) as usize, (rh / cell) as usize);
        let want = pick(rng, &[1u32, 1, 2, 2, 3, 4]);
        let mut cells: Vec<usize> = (0..cols * rows).collect();
        let count = want.min(cells.len() as u32).max(1);
        let mut objects = Vec::new();
        for _ in 0..count {
            let c = cells.swap_remove(rng.random_range(0..cells.len()));
            let (col, row) = ((c % cols) as f32, (c / cols) as f32);
            let slack = cell - s;
            objects.push(Object {
                x: rx + col * cell + s / 2.0 + rng.random_range(0.0..=slack),
                y: ry + row * cell + s / 2.0 + rng.random_range(0.0..=slack),
                size_px: s,
            });
        }
        groups.push(Group {
            shape,
            colour: colour.to_string(),
            rgb,
            size,
            count,
            objects,
        });
    }
    Scene {
        width,
        height,
        background: Background {
            colour: bg_name.to_string(),
            rgb: bg_rgb,
            texture,
        },
        layout,
        groups,
        format: if png { "png" } else { "jpeg" }.to_string(),
    }
}

/// Draw the scene as RGB pixels (row-major, 3 bytes per pixel).
pub fn render(scene: &Scene, rng: &mut impl RngCore) -> Vec<u8> {
    let (w, h) = (scene.width as usize, scene.height as usize);
    let mut px = vec![0u8; w * h * 3];
    let bg = scene.background.rgb;
    // Per-pixel noise from a xorshift seeded by `rng`: a ChaCha draw per pixel is needlessly slow.
    let mut state = rng.next_u64() | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 17) as i32 - 8
    };
    for y in 0..h {
        for x in 0..w {
            let delta: i32 = match scene.background.texture {
                Texture::Plain => 0,
                Texture::Noise => noise(),
                Texture::Gradient => ((x + y) as f32 / (w + h) as f32 * 30.0) as i32 - 15,
            };
            let i = (y * w + x) * 3;
            for c in 0..3 {
                px[i + c] = (bg[c] as i32 + delta).clamp(0, 255) as u8;
            }
        }
    }
    for g in &scene.groups {
        for o in &g.objects {
            let r = o.size_px / 2.0;
            let (x0, x1) = (
                ((o.x - r).floor().max(0.0)) as usize,
                ((o.x + r).ceil() as usize).min(w),
            );
            let (y0, y1) = (
                ((o.y - r).floor().max(0.0)) as usize,
                ((o.y + r).ceil() as usize).min(h),
            );
            for y in y0..y1 {
                for x in x0..x1 {
                    let dx = (x as f32 + 0.5 - o.x) / r;
                    let dy = (y as f32 + 0.5 - o.y) / r;
                    if g.shape.contains(dx, dy) {
                        let i = (y * w + x) * 3;
                        px[i..i + 3].copy_from_slice(&g.rgb);
                    }
                }
            }
        }
    }
    px
}
