//! The work plan: which (shard, row group) units this partition reads, in which order, and how rows are
//! shuffled. Everything here is a pure function of the config, the epoch and row counts, which is what
//! makes the stream reproducible and the cursor small.
//!
//! Per epoch the shard order is a seeded permutation, and each shard's row groups are permuted too. The
//! epoch's units are numbered globally in that order (`g = 0, 1, ...`) and unit `g` belongs to partition
//! `g % parts`, with `partition = rank * num_workers + worker` and `parts = world_size * num_workers`.
//! Every rank computes the same global order, so the partition is disjoint and complete by construction,
//! and per-partition unit counts differ by at most one. A partition's units are grouped into windows of
//! `shuffle_window` consecutive units; rows are shuffled within a window only, which bounds memory.
use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// This reader's slice of the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub part: usize,
    pub parts: usize,
}

impl Partition {
    pub fn new(
        rank: usize,
        world_size: usize,
        worker: usize,
        num_workers: usize,
    ) -> Result<Self, String> {
        if world_size == 0 || num_workers == 0 {
            return Err("world_size and num_workers must be at least 1".into());
        }
        if rank >= world_size || worker >= num_workers {
            return Err(format!(
                "rank {rank} must be < world_size {world_size} and worker {worker} < num_workers {num_workers}"
            ));
        }
        Ok(Partition {
            part: rank * num_workers + worker,
            parts: world_size * num_workers,
        })
    }

    /// Whether global unit `g` of an epoch belongs to this partition.
    pub fn owns(&self, g: u64) -> bool {
        g % self.parts as u64 == self.part as u64
    }
}

/// SplitMix64 finaliser: a stable way to derive independent seeds from several integers.
pub fn mix(values: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &v in values {
        h ^= v;
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// A seeded permutation of `0..n` (Fisher-Yates). Implemented here rather than through a library
/// shuffle so that the order cannot change with a dependency upgrade: saved cursors must stay valid.
pub fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..n).rev() {
        // Multiply-shift maps a 64-bit draw to 0..=i with negligible bias.
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        v.swap(i, j);
    }
    v
}

const TAG_SHARDS: u64 = 1;
const TAG_ROW_GROUPS: u64 = 2;
const TAG_ROWS: u64 = 3;

/// The order in which shards are walked in `epoch`.
pub fn shard_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<u32> {
    if shuffle {
        permutation(n, mix(&[seed, TAG_SHARDS, epoch]))
    } else {
        (0..n as u32).collect()
    }
}

/// The order of a shard's row groups in `epoch`.
pub fn row_group_order(n: usize, shuffle: bool, seed: u64, epoch: u64, shard: u32) -> Vec<u32> {
    if shuffle {
        permutation(n, mix(&[seed, TAG_ROW_GROUPS, epoch, shard as u64]))
    } else {
        (0..n as u32).collect()
    }
}

/// The row order inside one window: position `p` of the window emits flat row `perm[p]` (rows of the
/// window's units concatenated). `None` means identity.
pub fn window_rows(
    total_rows: usize,
    shuffle: bool,
    seed: u64,
    epoch: u64,
    part: &Partition,
    window: u64,
) -> Option<Vec<u32>> {
    shuffle.then(|| {
        permutation(
            total_rows,
            mix(&[
                seed,
                TAG_ROWS,
                epoch,
                part.part as u64,
                part.parts as u64,
                window,
            ]),
        )
    })
}
