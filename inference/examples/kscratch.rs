use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use fleet_inference::kernels::QuantMatrix;
use std::time::Instant;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let (n, k, m, copies) = (args[0], args[1], args[2], args[3]);
    let d = &Device::Cpu;
    let mut qs = Vec::new();
    for _ in 0..copies {
        let w = Tensor::randn(0f32, 0.02, (n, k), d)?;
        qs.push(QuantMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q8_0)?)?);
    }
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let mut out = vec![0f32; m * n];
    let mut ts = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        qs[i % copies].matmul_slice(&x, &mut out)?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    let b = qs[0].bytes() as f64;
    println!(
        "n={n} k={k} m={m} copies={copies}: min {:.3} ms med {:.3} ms  -> {:.1} GB/s (median)",
        ts[0] * 1e3,
        ts[100] * 1e3,
        b / ts[100] / 1e9
    );
    Ok(())
}
