//! Lifetimes of the intermediate values of a straight-line program: the step
//! that defines each value and the last step that reads it. Graph outputs live
//! to the end; graph inputs and constants are not planned (their memory is the
//! caller's or the weights').

use crate::error::{Error, Result};

/// What a value is, for planning purposes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Produced and consumed inside a run: gets a place in the arena.
    Intermediate,
    /// Produced by the run and returned: in the arena, alive until the end.
    Output,
    /// Provided from outside (inputs, constants): never planned.
    External,
}

/// One value: its size in bytes for the dims being planned, and its kind.
#[derive(Copy, Clone, Debug)]
pub struct ValueInfo {
    pub bytes: usize,
    pub kind: ValueKind,
}

/// One step of the program, in execution order.
#[derive(Clone, Debug)]
pub struct Step {
    pub inputs: Vec<usize>,
    pub output: usize,
    /// The step may write its output over its first input when that input dies
    /// here (elementwise ops).
    pub in_place: bool,
}

/// `[first, last]` step indices during which a value must stay intact.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    pub fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Lifetimes of every planned value (`None` for external or unused ones).
pub fn lifetimes(steps: &[Step], values: &[ValueInfo]) -> Result<Vec<Option<Lifetime>>> {
    let mut out: Vec<Option<Lifetime>> = vec![None; values.len()];
    let check = |id: usize| -> Result<()> {
        if id >= values.len() {
            return Err(Error::Internal(format!(
                "step refers to value {id} of {}",
                values.len()
            )));
        }
        Ok(())
    };
    for (t, step) in steps.iter().enumerate() {
        check(step.output)?;
        if values[step.output].kind == ValueKind::External {
            return Err(Error::Internal(format!(
                "step {t} writes external value {}",
                step.output
            )));
        }
        if out[step.output].is_some() {
            return Err(Error::Internal(format!(
                "value {} is defined twice (step {t})",
                step.output
            )));
        }
        for &i in &step.inputs {
            check(i)?;
            if values[i].kind == ValueKind::External {
                continue;
            }
            match &mut out[i] {
                Some(l) => l.last = t,
                None => {
                    return Err(Error::Internal(format!(
                        "step {t} reads value {i} before it is defined"
                    )))
                }
            }
        }
        out[step.output] = Some(Lifetime { first: t, last: t });
    }
    let end = steps.len().saturating_sub(1);
    for (v, l) in values.iter().zip(out.iter_mut()) {
        if let (ValueKind::Output, Some(l)) = (v.kind, l.as_mut()) {
            l.last = end;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_lifetimes_and_outputs() {
        let values = [
            ValueInfo {
                bytes: 8,
                kind: ValueKind::External,
            },
            ValueInfo {
                bytes: 8,
                kind: ValueKind::Intermediate,
            },
            ValueInfo {
                bytes: 8,
                kind: ValueKind::Intermediate,
            },
            ValueInfo {
                bytes: 8,
                kind: ValueKind::Output,
            },
        ];
        let steps = [
            Step {
                inputs: vec![0],
                output: 1,
                in_place: false,
            },
            Step {
                inputs: vec![1],
                output: 2,
                in_place: true,
            },
            Step {
                inputs: vec![2, 1],
                output: 3,
                in_place: false,
            },
        ];
        let l = lifetimes(&steps, &values).unwrap();
        assert_eq!(l[0], None);
        assert_eq!(l[1], Some(Lifetime { first: 0, last: 2 }));
        assert_eq!(l[2], Some(Lifetime { first: 1, last: 2 }));
        assert_eq!(l[3], Some(Lifetime { first: 2, last: 2 }));
        let bad = [Step {
            inputs: vec![2],
            output: 1,
            in_place: false,
        }];
        assert!(lifetimes(&bad, &values).is_err());
    }
}
