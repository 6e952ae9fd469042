//! Completion indexes of Indexed Jobs: the index a pod runs (its
//! `batch.kubernetes.io/job-completion-index` annotation) and sets of
//! indexes in the compressed form `status.completedIndexes` holds
//! (`1,3-5,7`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;

/// The annotation (and label) holding a pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// The pod's completion index, if its annotation holds one.
pub fn of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

/// Parses `1,3-5`, keeping only indexes below `completions` (the rest
/// were left behind by a scale-down).
pub fn parse(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse(), part.parse()),
        };
        if let (Ok(first), Ok(last)) = (first, last) {
            set.extend((first..=last.min(completions - 1)).filter(|i| *i >= 0));
        }
    }
    set
}

/// The compressed form: runs of three or more consecutive indexes as
/// `first-last` (two are listed, as upstream lists them).
pub fn format(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in set {
        run = match run {
            Some((first, last)) if i == last + 1 => Some((first, i)),
            Some(r) => {
                parts.push(interval(r));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    parts.extend(run.map(interval));
    parts.join(",")
}

fn interval((first, last): (i32, i32)) -> String {
    match last - first {
        0 => first.to_string(),
        1 => format!("{first},{last}"),
        _ => format!("{first}-{last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_sets_round_trip_in_compressed_form() {
        let set = parse("0,2-4,7", 10);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
        assert_eq!(format(&set), "0,2-4,7");
        assert_eq!(format(&parse("0-9", 5)), "0-4");
        assert_eq!(format(&BTreeSet::from([1, 2, 5, 6, 7, 9])), "1,2,5-7,9");
        assert_eq!(format(&BTreeSet::new()), "");
    }
}
