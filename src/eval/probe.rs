//! Linear probes: how much of an attribute (shape, colour, count) a frozen feature vector carries.
//!
//! A multinomial logistic regression on standardised features, trained full-batch with Adam for a fixed
//! number of steps on a deterministic split: the same features always give the same accuracy, so two
//! vision towers can be compared by their probes alone.
use anyhow::{Result, ensure};
use tch::{Device, Kind, Tensor, nn, nn::Module, nn::OptimizerConfig};

#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    /// Share of the examples used to fit the probe; the rest measure it.
    pub train_fraction: f64,
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            train_fraction: 0.6,
            steps: 300,
            lr: 0.05,
            weight_decay: 1e-3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeResult {
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// Accuracy of always answering the most frequent training class.
    pub majority_baseline: f64,
    pub n_train: usize,
    pub n_test: usize,
}

/// Fit a linear probe on `features` (`[n, d]`, f32) for integer `labels` in `0..n_classes`.
/// Examples are split in order (the caller shuffles if it wants to): the first part trains.
pub fn linear_probe(
    features: &Tensor,
    labels: &[i64],
    n_classes: i64,
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
    let n = labels.len();
    ensure!(
        features.size()[0] as usize == n,
        "{} feature rows for {n} labels",
        features.size()[0]
    );
    ensure!(n >= 4, "a probe needs at least 4 examples, got {n}");
    let n_train = ((n as f64 * cfg.train_fraction).round() as usize).clamp(1, n - 1);
    let x = features.to_kind(Kind::Float).to_device(Device::Cpu);
    let y = Tensor::from_slice(labels);
    let (x_train, x_test) = (
        x.narrow(0, 0, n_train as i64),
        x.narrow(0, n_train as i64, (n - n_train) as i64),
    );
    let (y_train, y_test) = (
        y.narrow(0, 0, n_train as i64),
        y.narrow(0, n_train as i64, (n - n_train) as i64),
    );
    // Standardise with the training statistics only.
    let mean = x_train.mean_dim(0, true, Kind::Float);
    let std = x_train.std_dim(0, false, true).clamp_min(1e-6);
    let x_train = (&x_train - &mean) / &std;
    let x_test = (&x_test - &mean) / &std;

    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let linear = nn::linear(vs.root(), x.size()[1], n_classes, Default::default());
    let mut opt = nn::Adam {
        wd: cfg.weight_decay,
        ..Default::default()
    }
    .build(&vs, cfg.lr)?;
    for _ in 0..cfg.steps {
        let loss = linear.forward(&x_train).cross_entropy_for_logits(&y_train);
        opt.backward_step(&loss);
    }
    let accuracy = |x: &Tensor, y: &Tensor| -> f64 {
        tch::no_grad(|| {
            linear
                .forward(x)
                .argmax(-1, false)
                .eq_tensor(y)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        })
    };
    let mut counts = vec![0usize; n_classes as usize];
    for &l in &labels[..n_train] {
        counts[l as usize] += 1;
    }
    let majority = counts
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
        .map(|(i, _)| i as i64)
        .unwrap_or(0);
    let majority_baseline =
        labels[n_train..].iter().filter(|&&l| l == majority).count() as f64 / (n - n_train) as f64;
    Ok(ProbeResult {
        train_accuracy: accuracy(&x_train, &y_train),
        test_accuracy: accuracy(&x_test, &y_test),
        majority_baseline,
        n_train,
        n_test: n - n_train,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_classes_are_learned_and_noise_is_not() {
        tch::manual_seed(1);
        let n = 200i64;
        let labels: Vec<i64> = (0..n).map(|i| i % 3).collect();
        let y = Tensor::from_slice(&labels);
        let noise = Tensor::randn([n, 8], (Kind::Float, Device::Cpu)) * 0.1;
        // Class k shifts feature k by 1: linearly separable.
        let signal = y.one_hot(3).to_kind(Kind::Float);
        let features = Tensor::cat(
            &[signal, Tensor::zeros([n, 5], (Kind::Float, Device::Cpu))],
            1,
        ) + noise;
        let r = linear_probe(&features, &labels, 3, &ProbeConfig::default()).unwrap();
        assert!(r.test_accuracy > 0.95, "{r:?}");

        let random = Tensor::randn([n, 8], (Kind::Float, Device::Cpu));
        let r = linear_probe(&random, &labels, 3, &ProbeConfig::default()).unwrap();
        assert!(r.test_accuracy < 0.6, "{r:?}");
        assert_eq!((r.n_train, r.n_test), (120, 80));
    }
}
