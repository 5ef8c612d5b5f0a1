//! The conformance suite every device must pass. Each case builds a small graph
//! (one op at odd shapes, or a few ops chained), runs it on the device under
//! test, and compares with the same graph run by the CPU device on the scalar
//! `generic` kernel tier. A device that lacks an op (`supports` is false) fails
//! the case: coverage must match the CPU's.
//!
//! A plugin crate runs it from its own tests:
//! `assert!(rtserve_conformance::run_suite(&MyDevice::new()).failures.is_empty())`.

use std::collections::HashMap;

use rtserve_core::device::cpu::CpuDevice;
use rtserve_core::device::Device;
use rtserve_core::exec::{CancelToken, Compiled};
use rtserve_core::graph::{Dim, Graph, Op, RopeArgs, ValueId};
use rtserve_core::kernels::frame::epilogue::Activation;
use rtserve_core::kernels::generic::elementwise::{Binary, Unary};
use rtserve_core::kernels::testing::uniform;
use rtserve_core::kernels::{dispatch, set_isa, Isa};
use rtserve_core::ops::reduce::Reduce;
use rtserve_core::{DType, Result, Tensor};

/// What the suite found.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<String>,
    pub failures: Vec<String>,
}

fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
    Tensor::from_slice(&uniform(shape.iter().product(), seed, -1.0, 1.0), shape)
}

/// Values in [lo, hi) (for ops defined on part of the line, like log).
fn random_in(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Result<Tensor> {
    Tensor::from_slice(&uniform(shape.iter().product(), seed, lo, hi), shape)
}

/// A bool tensor, true where `pattern(i)` holds for the flat index i.
fn flags(shape: &[usize], pattern: impl Fn(usize) -> bool) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let ints: Vec<i64> = (0..n).map(|i| i64::from(pattern(i))).collect();
    Tensor::from_slice(&ints, shape)?.cast(DType::Bool)
}

fn known(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Known(d)).collect()
}

/// Adds a case's nodes to a graph, given its input values; returns the output value.
type BuildFn = dyn Fn(&mut Graph, &[ValueId]) -> Result<ValueId>;

/// One case: a graph builder, its inputs, and a tolerance.
struct Case {
    name: String,
    build: Box<BuildFn>,
    inputs: Vec<Tensor>,
    /// |got - want| <= atol + rtol * |want|
    atol: f32,
    rtol: f32,
}

fn case(
    name: impl Into<String>,
    inputs: Vec<Tensor>,
    atol: f32,
    build: impl Fn(&mut Graph, &[ValueId]) -> Result<ValueId> + 'static,
) -> Case {
    Case {
        name: name.into(),
        build: Box::new(build),
        inputs,
        atol,
        rtol: 1e-4,
    }
}

fn cases() -> Result<Vec<Case>> {
    let mut out = Vec::new();
    for &(m, k, n) in &[(1, 7, 5), (9, 33, 17), (33, 127, 40)] {
        out.push(case(
            format!("matmul {m}x{k}x{n}"),
            vec![random(&[m, k], 1)?, random(&[k, n], 2)?],
            1e-4,
            |g, x| g.matmul(x[0], x[1]),
        ));
        for act in [
            Activation::None,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::Relu,
        ] {
            out.push(case(
                format!("linear {act:?} {m}x{k}x{n}"),
                vec![random(&[m, k], 3)?, random(&[n, k], 4)?, random(&[n], 5)?],
                1e-4,
                move |g, x| g.linear(x[0], x[1], Some(x[2]), act),
            ));
        }
    }
    for op in [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Max,
        Binary::Min,
    ] {
        out.push(case(
            format!("{op:?} broadcast [7,33]+[33]"),
            vec![random(&[7, 33], 6)?, random(&[33], 7)?],
            1e-6,
            move |g, x| g.binary(op, x[0], x[1]),
        ));
    }
    out.push(case(
        "pow [5,17]**[5,1]",
        vec![random_in(&[5, 17], 30, 0.1, 2.0)?, random(&[5, 1], 31)?],
        1e-6,
        |g, x| g.pow(x[0], x[1]),
    ));
    out.push(case(
        "div",
        vec![
            random(&[5, 17], 8)?,
            Tensor::from_slice(&[1.5f32; 17], &[17])?,
        ],
        1e-6,
        |g, x| g.div(x[0], x[1]),
    ));
    for op in [
        Unary::Exp,
        Unary::Tanh,
        Unary::Erf,
        Unary::Gelu,
        Unary::GeluTanh,
        Unary::Silu,
        Unary::Relu,
        Unary::Sigmoid,
        Unary::Neg,
        Unary::Abs,
    ] {
        out.push(case(
            format!("{op:?} [3,257]"),
            vec![random(&[3, 257], 9)?],
            1e-5,
            move |g, x| g.unary(op, x[0]),
        ));
    }
    for op in [Unary::Log, Unary::Sqrt, Unary::Rsqrt] {
        out.push(case(
            format!("{op:?} [3,257] on (0, 4)"),
            vec![random_in(&[3, 257], 32, 1e-3, 4.0)?],
            1e-5,
            move |g, x| g.unary(op, x[0]),
        ));
    }
    out.push(case(
        "softmax [7,33]",
        vec![random(&[7, 33], 10)?],
        1e-6,
        |g, x| g.softmax(x[0], -1),
    ));
    out.push(case(
        "log_softmax [7,33] axis 0",
        vec![random_in(&[7, 33], 33, -20.0, 20.0)?],
        1e-5,
        |g, x| g.log_softmax(x[0], 0),
    ));
    out.push(case(
        "layer_norm [5,127]",
        vec![
            random(&[5, 127], 11)?,
            random(&[127], 12)?,
            random(&[127], 13)?,
        ],
        1e-5,
        |g, x| g.layer_norm(x[0], Some(x[1]), Some(x[2]), 1e-5),
    ));
    out.push(case(
        "rms_norm [5,127]",
        vec![random(&[5, 127], 14)?, random(&[127], 15)?],
        1e-5,
        |g, x| g.rms_norm(x[0], Some(x[1]), 1e-6),
    ));
    for interleaved in [false, true] {
        out.push(case(
            format!("rope interleaved={interleaved}"),
            vec![random(&[2, 7, 3, 16], 16)?],
            1e-5,
            move |g, x| {
                let args = RopeArgs {
                    interleaved,
                    ..RopeArgs::default()
                };
                g.rope(x[0], &args)
            },
        ));
        out.push(case(
            format!("rope offset=5 rotary_dim=10 interleaved={interleaved}"),
            vec![random(&[3, 5, 2, 14], 34)?],
            1e-5,
            move |g, x| {
                let args = RopeArgs {
                    offset: 5,
                    rotary_dim: Some(10),
                    interleaved,
                    ..RopeArgs::default()
                };
                g.rope(x[0], &args)
            },
        ));
    }
    let positions: Vec<i64> = (0..2 * 7).map(|i| (i * 37 % 101) as i64).collect();
    out.push(case(
        "rope positions [2,7] i64",
        vec![
            random(&[2, 7, 3, 16], 35)?,
            Tensor::from_slice(&positions, &[2, 7])?,
        ],
        1e-5,
        |g, x| {
            let args = RopeArgs {
                positions: Some(x[1]),
                theta: 500_000.0,
                ..RopeArgs::default()
            };
            g.rope(x[0], &args)
        },
    ));
    out.push(case(
        "rope positions [7] i32, inv_freq, rotary_dim=6",
        vec![
            random(&[2, 7, 3, 10], 36)?,
            Tensor::from_slice(&[9i32, 3, 0, 11, 40, 2, 7], &[7])?,
            random_in(&[3], 37, 0.01, 1.0)?,
        ],
        1e-5,
        |g, x| {
            let args = RopeArgs {
                positions: Some(x[1]),
                inv_freq: Some(x[2]),
                rotary_dim: Some(6),
                interleaved: true,
                ..RopeArgs::default()
            };
            g.rope(x[0], &args)
        },
    ));
    for causal in [false, true] {
        out.push(case(
            format!("attention gqa causal={causal}"),
            vec![
                random(&[2, 9, 4, 16], 17)?,
                random(&[2, 13, 2, 16], 18)?,
                random(&[2, 13, 2, 8], 19)?,
            ],
            1e-5,
            move |g, x| g.attention(x[0], x[1], x[2], causal, None, None, None),
        ));
        out.push(case(
            format!("attention key_padding_mask bool causal={causal}"),
            vec![
                random(&[2, 9, 4, 16], 38)?,
                random(&[2, 13, 2, 16], 39)?,
                random(&[2, 13, 2, 8], 40)?,
                flags(&[2, 13], |i| i % 13 < 10 - 3 * (i / 13))?,
            ],
            1e-5,
            move |g, x| g.attention(x[0], x[1], x[2], causal, Some(0.3), Some(x[3]), None),
        ));
    }
    let int_mask: Vec<i32> = (0..3 * 5).map(|i| i32::from(i % 5 != 1) * 7).collect();
    out.push(case(
        "attention key_padding_mask i32",
        vec![
            random(&[3, 5, 3, 7], 41)?,
            random(&[3, 5, 1, 7], 42)?,
            random(&[3, 5, 1, 7], 43)?,
            Tensor::from_slice(&int_mask, &[3, 5])?,
        ],
        1e-5,
        |g, x| g.attention(x[0], x[1], x[2], false, None, Some(x[3]), None),
    ));
    let ids = Tensor::from_slice(&[3i64, 0, 6, 6, 1], &[5])?;
    out.push(case(
        "embedding",
        vec![random(&[7, 9], 20)?, ids],
        0.0,
        |g, x| g.embedding(x[0], x[1]),
    ));
    out.push(case(
        "reshape+transpose",
        vec![random(&[4, 6, 5], 21)?],
        0.0,
        |g, x| {
            let r = g.reshape(x[0], &[Some(Dim::Known(24)), None])?;
            g.transpose(r, &[1, 0])
        },
    ));
    out.push(case(
        "concat",
        vec![random(&[3, 5], 22)?, random(&[2, 5], 23)?],
        0.0,
        |g, x| g.concat(&[x[0], x[1]], 0),
    ));
    out.push(case(
        "sum/mean",
        vec![random(&[6, 33], 24)?],
        1e-5,
        |g, x| {
            let s = g.sum(x[0], Some(1), true)?;
            let m = g.mean(x[0], Some(1), true)?;
            g.add(s, m)
        },
    ));
    for kind in [Reduce::Max, Reduce::Min, Reduce::ArgMax] {
        for (axis, keepdims) in [(Some(0), false), (Some(-1), true), (None, false)] {
            out.push(case(
                format!("{} [6,33] axis={axis:?} keepdims={keepdims}", kind.name()),
                vec![random(&[6, 33], 44)?],
                0.0,
                move |g, x| g.reduce(kind, x[0], axis, keepdims),
            ));
        }
    }
    out.push(case(
        "where [7,1] ? [7,33] : [33]",
        vec![
            flags(&[7, 1], |i| i % 3 != 0)?,
            random(&[7, 33], 45)?,
            random(&[33], 46)?,
        ],
        0.0,
        |g, x| g.where_(x[0], x[1], x[2]),
    ));
    out.push(case(
        "masked_fill [5,17] mask [1,17] -inf",
        vec![random(&[5, 17], 47)?, flags(&[1, 17], |i| i % 4 == 1)?],
        0.0,
        |g, x| g.masked_fill(x[0], x[1], f64::NEG_INFINITY),
    ));
    for (axis, largest) in [(-1, true), (-1, false), (0, true)] {
        out.push(case(
            format!("topk k=5 axis={axis} largest={largest} [9,33] values"),
            vec![random(&[9, 33], 48)?],
            0.0,
            move |g, x| Ok(g.topk(x[0], 5, axis, largest)?.0),
        ));
        out.push(case(
            format!("topk k=5 axis={axis} largest={largest} [9,33] indices"),
            vec![random(&[9, 33], 48)?],
            0.0,
            move |g, x| Ok(g.topk(x[0], 5, axis, largest)?.1),
        ));
    }
    for (axis, start, stop, step) in [
        (1, Some(3), Some(-2), 4),
        (0, None, None, -2),
        (-1, Some(-7), None, 1),
        (1, Some(40), Some(1), -5),
    ] {
        out.push(case(
            format!("slice [9,33] axis={axis} {start:?}:{stop:?}:{step}"),
            vec![random(&[9, 33], 49)?],
            0.0,
            move |g, x| g.slice(x[0], axis, start, stop, step),
        ));
    }
    out.push(case(
        "slice fused qkv [5,3*16] -> k",
        vec![random(&[5, 48], 50)?],
        0.0,
        |g, x| g.slice(x[0], -1, Some(16), Some(32), 1),
    ));
    out.push(case(
        "cast f32->f16->f32",
        vec![random(&[17], 25)?],
        1e-3,
        |g, x| {
            let h = g.cast(x[0], DType::F16)?;
            g.cast(h, DType::F32)
        },
    ));
    // A small transformer-style block: norm -> linear -> gelu -> linear -> residual.
    out.push(case(
        "graph: mlp block",
        vec![
            random(&[9, 33], 26)?,
            random(&[33], 27)?,
            random(&[65, 33], 28)?,
            random(&[33, 65], 29)?,
        ],
        1e-4,
        |g, x| {
            let n = g.layer_norm(x[0], Some(x[1]), None, 1e-5)?;
            let u = g.linear(n, x[2], None, Activation::Gelu)?;
            let d = g.linear(u, x[3], None, Activation::None)?;
            g.add(d, x[0])
        },
    ));
    Ok(out)
}

fn build(case: &Case) -> Result<Compiled> {
    let mut g = Graph::new();
    let mut ids = Vec::new();
    for (i, t) in case.inputs.iter().enumerate() {
        ids.push(g.input(&format!("in{i}"), known(t.shape()), t.dtype())?);
    }
    let out = (case.build)(&mut g, &ids)?;
    g.output("out", out)?;
    Compiled::new(&g)
}

fn run_on(device: &dyn Device, program: &Compiled, case: &Case) -> Result<Tensor> {
    let exe = device.prepare(program)?;
    let inputs: HashMap<String, Tensor> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("in{i}"), t.clone()))
        .collect();
    let mut out = exe.run(&inputs, &CancelToken::default())?;
    device.synchronize()?;
    out.remove("out")
        .ok_or_else(|| rtserve_core::Error::Internal("no output".into()))
}

fn compare(got: &Tensor, want: &Tensor, atol: f32, rtol: f32) -> std::result::Result<(), String> {
    if got.shape() != want.shape() || got.dtype() != want.dtype() {
        return Err(format!(
            "got {} {:?}, want {} {:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    let (g, w) = (
        got.cast(DType::F64).map_err(|e| e.to_string())?,
        want.cast(DType::F64).map_err(|e| e.to_string())?,
    );
    let (g, w) = (
        g.elements::<f64>().map_err(|e| e.to_string())?,
        w.elements::<f64>().map_err(|e| e.to_string())?,
    );
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if (a - b).abs() > atol as f64 + rtol as f64 * b.abs() || a.is_nan() != b.is_nan() {
            return Err(format!("element {i}: got {a}, want {b}"));
        }
    }
    Ok(())
}

/// Runs every case on `device`. Switches the process-wide ISA tier to compute
/// the references, so call it from one test at a time.
pub fn run_suite(device: &dyn Device) -> Report {
    let mut report = Report::default();
    let cases = match cases() {
        Ok(c) => c,
        Err(e) => {
            report.failures.push(format!("building the cases: {e}"));
            return report;
        }
    };
    let reference_device = CpuDevice;
    let best = dispatch::detected();
    for case in &cases {
        let outcome = (|| -> std::result::Result<(), String> {
            let program = build(case).map_err(|e| format!("build: {e}"))?;
            for node in program.nodes() {
                let dtype = node
                    .inputs
                    .first()
                    .map_or(node.out.dtype, |&i| program.nodes()[i].out.dtype);
                if !matches!(node.op, Op::Input { .. } | Op::Constant(_))
                    && !device.supports(&node.op, dtype)
                {
                    return Err(format!(
                        "device does not support {} on {dtype}",
                        node.op.name()
                    ));
                }
            }
            set_isa(Isa::Generic).map_err(|e| e.to_string())?;
            let want =
                run_on(&reference_device, &program, case).map_err(|e| format!("reference: {e}"));
            set_isa(best).map_err(|e| e.to_string())?;
            let got = run_on(device, &program, case).map_err(|e| format!("device: {e}"))?;
            compare(&got, &want?, case.atol, case.rtol)
        })();
        match outcome {
            Ok(()) => report.passed.push(case.name.clone()),
            Err(e) => report.failures.push(format!("{}: {e}", case.name)),
        }
    }
    report
}
