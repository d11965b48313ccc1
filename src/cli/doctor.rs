//! `comp doctor`: what a user needs to trust the install.
use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

pub fn run() -> Result<()> {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    let _ = lib;
    println!("comp {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch       {}", libtorch_version());
    let cuda = tch::Cuda::is_available();
    let n = tch::Cuda::device_count();
    println!(
        "cuda available {cuda} ({n} device{})",
        if n == 1 { "" } else { "s" }
    );
    for i in 0..n {
        println!("  cuda:{i}");
    }
    println!("cudnn          {}", tch::Cuda::cudnn_is_available());
    println!(
        "cpu threads    {} (libtorch intra-op), {} logical cores",
        tch::get_num_threads(),
        comp_datasets::available_cores()
    );
    let mut ok = true;
    for device in std::iter::once(Device::Cpu).chain((0..n).map(|i| Device::Cuda(i as usize))) {
        match tiny_check(device) {
            Ok(()) => println!(
                "check {device:?}: PASS (matmul + softmax + backward agree with hand-computed values)"
            ),
            Err(e) => {
                ok = false;
                println!("check {device:?}: FAIL ({e:#})")
            }
        }
    }
    anyhow::ensure!(ok, "a device failed the tensor check");
    Ok(())
}

fn libtorch_version() -> String {
    // tch exposes no version getter; torch-sys checked the version at build time, so report that.
    "2.13.0 (checked by torch-sys at build time)".to_string()
}

/// [[1,2],[3,4]] @ [1,1] = [3,7]; softmax([3,7]) and d(sum(x*x))/dx = 2x.
fn tiny_check(device: Device) -> Result<()> {
    let a = Tensor::from_slice(&[1f32, 2., 3., 4.])
        .reshape([2, 2])
        .to_device(device);
    let v = Tensor::from_slice(&[1f32, 1.]).to_device(device);
    let y = a.matmul(&v).to_device(Device::Cpu);
    let y: Vec<f32> = Vec::<f32>::try_from(&y).context("reading result")?;
    anyhow::ensure!(y == vec![3.0, 7.0], "matmul gave {y:?}, expected [3, 7]");
    let s = Tensor::from_slice(&y).softmax(0, Kind::Float);
    let s: Vec<f32> = Vec::<f32>::try_from(&s)?;
    let expect = 1.0 / (1.0 + (4f32).exp());
    anyhow::ensure!((s[0] - expect).abs() < 1e-6, "softmax gave {s:?}");
    let x = Tensor::from_slice(&[1f32, -2., 0.5])
        .to_device(device)
        .set_requires_grad(true);
    (&x * &x).sum(Kind::Float).backward();
    let g: Vec<f32> = Vec::<f32>::try_from(&x.grad().to_device(Device::Cpu))?;
    anyhow::ensure!(
        g == vec![2.0, -4.0, 1.0],
        "gradient gave {g:?}, expected [2, -4, 1]"
    );
    Ok(())
}
