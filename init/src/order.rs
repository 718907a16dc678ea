//! `after:` ordering of units: a topological start order, and the units that can never start
//! because they name an unknown unit, sit on a cycle, or wait on such a unit.

use std::collections::BTreeMap;

/// Why a unit is never started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// `after:` names a unit that does not exist.
    Unknown(String),
    /// The unit is part of (or waits on) a dependency cycle.
    Cycle,
    /// It waits on a unit that is itself blocked.
    Dependency(String),
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocked::Unknown(n) => write!(f, "after: names unknown unit {n:?}"),
            Blocked::Cycle => write!(f, "after: dependency cycle"),
            Blocked::Dependency(n) => write!(f, "waits on {n:?}, which is never started"),
        }
    }
}

/// Result of ordering.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Order {
    /// Indices of startable units, each after everything it waits on (ties keep config order).
    pub start: Vec<usize>,
    /// Indices of units never started, with the reason.
    pub blocked: Vec<(usize, Blocked)>,
}

/// Orders units given as `(name, after)` pairs.
pub fn order(units: &[(&str, &[String])]) -> Order {
    let index: BTreeMap<&str, usize> = units
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    let n = units.len();
    let mut reason: Vec<Option<Blocked>> = vec![None; n];
    for (i, (_, after)) in units.iter().enumerate() {
        if let Some(unknown) = after.iter().find(|a| !index.contains_key(a.as_str())) {
            if let Some(r) = reason.get_mut(i) {
                *r = Some(Blocked::Unknown(unknown.clone()));
            }
        }
    }
    // Kahn's algorithm, always taking the lowest ready index so the order is stable.
    let deps: Vec<Vec<usize>> = units
        .iter()
        .map(|(_, after)| {
            after
                .iter()
                .filter_map(|a| index.get(a.as_str()).copied())
                .collect()
        })
        .collect();
    let mut done = vec![false; n];
    let mut start = Vec::new();
    loop {
        let next = (0..n).find(|&i| {
            !done.get(i).copied().unwrap_or(true)
                && reason.get(i).is_some_and(Option::is_none)
                && deps.get(i).is_some_and(|d| {
                    d.iter().all(|&j| {
                        done.get(j).copied().unwrap_or(false)
                            && reason.get(j).is_some_and(Option::is_none)
                    })
                })
        });
        let Some(i) = next else { break };
        if let Some(d) = done.get_mut(i) {
            *d = true;
        }
        start.push(i);
        // A unit waiting on a blocked one is blocked too; propagate eagerly.
        propagate(&deps, units, &mut reason);
    }
    propagate(&deps, units, &mut reason);
    let mut blocked = Vec::new();
    for i in 0..n {
        if done.get(i).copied().unwrap_or(false) {
            continue;
        }
        let why = reason.get(i).cloned().flatten().unwrap_or(Blocked::Cycle);
        blocked.push((i, why));
    }
    Order { start, blocked }
}

fn propagate(deps: &[Vec<usize>], units: &[(&str, &[String])], reason: &mut [Option<Blocked>]) {
    loop {
        let mut changed = false;
        for (i, d) in deps.iter().enumerate() {
            if reason.get(i).is_some_and(Option::is_some) {
                continue;
            }
            let bad = d
                .iter()
                .find(|&&j| reason.get(j).is_some_and(Option::is_some));
            if let Some(&j) = bad {
                let name = units
                    .get(j)
                    .map(|(n, _)| (*n).to_owned())
                    .unwrap_or_default();
                if let Some(r) = reason.get_mut(i) {
                    *r = Some(Blocked::Dependency(name));
                    changed = true;
                }
            }
        }
        if !changed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: &[(&str, &[&str])]) -> Order {
        let owned: Vec<(&str, Vec<String>)> = spec
            .iter()
            .map(|(n, a)| (*n, a.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        let units: Vec<(&str, &[String])> = owned.iter().map(|(n, a)| (*n, a.as_slice())).collect();
        order(&units)
    }

    #[test]
    fn dependencies_come_first_and_ties_keep_config_order() {
        let o = run(&[
            ("web", &["db", "control"]),
            ("db", &[]),
            ("control", &[]),
            ("log", &[]),
        ]);
        assert_eq!(o.start, vec![1, 2, 0, 3]);
        assert!(o.blocked.is_empty());
    }

    #[test]
    fn chains_are_ordered() {
        let o = run(&[("c", &["b"]), ("b", &["a"]), ("a", &[])]);
        assert_eq!(o.start, vec![2, 1, 0]);
    }

    #[test]
    fn unknown_names_block_the_unit_and_its_dependents() {
        let o = run(&[("a", &["nope"]), ("b", &["a"]), ("c", &[])]);
        assert_eq!(o.start, vec![2]);
        assert_eq!(
            o.blocked,
            vec![
                (0, Blocked::Unknown("nope".into())),
                (1, Blocked::Dependency("a".into()))
            ]
        );
    }

    #[test]
    fn cycles_are_detected_and_only_they_are_blocked() {
        let o = run(&[
            ("a", &["b"]),
            ("b", &["a"]),
            ("c", &[]),
            ("d", &["c"]),
            ("e", &["a"]),
        ]);
        assert_eq!(o.start, vec![2, 3]);
        let blocked: Vec<usize> = o.blocked.iter().map(|(i, _)| *i).collect();
        assert_eq!(blocked, vec![0, 1, 4]);
        assert_eq!(o.blocked[0].1, Blocked::Cycle);
        assert_eq!(o.blocked[1].1, Blocked::Cycle);
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let o = run(&[("a", &["a"])]);
        assert!(o.start.is_empty());
        assert_eq!(o.blocked, vec![(0, Blocked::Cycle)]);
    }

    #[test]
    fn empty_is_empty() {
        assert_eq!(run(&[]), Order::default());
    }
}
