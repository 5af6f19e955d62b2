//! The counts of `snapshot-linux-blk`: its console lines `count I of N up T` and the numbers
//! of its count file, and the check that they are 1..N, once each and in order.

use super::{COUNT_PREFIX, COUNT_TO};

/// One count's console line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    /// The number.
    pub i: u32,
    /// The guest's uptime then, in seconds.
    pub up: f64,
}

/// The console lines `count I of N up T`, in order.
pub fn console_counts(serial: &str) -> Vec<Count> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix(COUNT_PREFIX)?;
            match rest.split(' ').collect::<Vec<_>>()[..] {
                [i, "of", n, "up", up] if n == COUNT_TO.to_string() => Some(Count {
                    i: i.parse().ok()?,
                    up: up.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect()
}

/// The numbers of the count file, one a line; a line that is not a number is an error.
pub fn file_counts(text: &str) -> std::result::Result<Vec<u32>, String> {
    text.lines()
        .enumerate()
        .map(|(n, l)| {
            l.trim()
                .parse()
                .map_err(|_| format!("line {} is {l:?}, not a number", n + 1))
        })
        .collect()
}

/// Checks that `counts` is exactly 1, 2, ..., `n`; otherwise says what is wrong: numbers
/// repeated or missing, and the first one out of place.
pub fn check_sequence(counts: &[u32], n: u32) -> std::result::Result<(), String> {
    let want: Vec<u32> = (1..=n).collect();
    if counts == want {
        return Ok(());
    }
    let times = |k: u32| counts.iter().filter(|&&c| c == k).count();
    let mut repeated: Vec<u32> = counts.iter().copied().filter(|&k| times(k) > 1).collect();
    repeated.sort_unstable();
    repeated.dedup();
    let missing: Vec<u32> = want.iter().copied().filter(|&k| times(k) == 0).collect();
    let mut what = vec![format!("{} numbers for 1..{n}", counts.len())];
    if !repeated.is_empty() {
        what.push(format!("repeated: {repeated:?}"));
    }
    if !missing.is_empty() {
        what.push(format!("missing: {missing:?}"));
    }
    let extra: Vec<u32> = counts
        .iter()
        .copied()
        .filter(|&k| k == 0 || k > n)
        .collect();
    if !extra.is_empty() {
        what.push(format!("out of range: {extra:?}"));
    }
    if let Some(p) = (0..counts.len().min(want.len())).find(|&p| counts[p] != want[p]) {
        what.push(format!(
            "first out of place: {} where {} belongs (position {})",
            counts[p],
            want[p],
            p + 1
        ));
    }
    Err(what.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_on_the_console() {
        // A count line split by the snapshot reads whole once the two logs are joined.
        let before = "PETREL-BOOT-TEST-INIT-OK\r\ncount 1 of 50 up 20.01 0.5\r\n\
                      count 1 of 50 up 20.01\r\ncount 2 of 50 up 20.12\r\ncount 3 o";
        let after = "f 50 up 20.23\r\r\n[   30.1] random: crng init done\r\n\
                     count 4 of 50 up 20.34\r\ncount 4 of 5 up 1.0\r\ncount 5 of 50\r\n";
        let i = |c: Vec<Count>| c.iter().map(|c| c.i).collect::<Vec<_>>();
        assert_eq!(i(console_counts(before)), [1, 2]);
        assert_eq!(i(console_counts(after)), [4]);
        let all = console_counts(&format!("{before}{after}"));
        assert_eq!(i(all.clone()), [1, 2, 3, 4]);
        assert_eq!(all[2], Count { i: 3, up: 20.23 });
        assert!(console_counts("count x of 50 up 1.0\ncount 7 of 50 up 1.0 more\n").is_empty());
    }

    #[test]
    fn count_sequences() {
        assert_eq!(check_sequence(&[1, 2, 3], 3), Ok(()));
        // Counted on again from an earlier point: numbers printed twice.
        assert_eq!(
            check_sequence(&[1, 2, 3, 2, 3], 3).unwrap_err(),
            "5 numbers for 1..3; repeated: [2, 3]"
        );
        assert_eq!(
            check_sequence(&[1, 2, 4, 5], 5).unwrap_err(),
            "4 numbers for 1..5; missing: [3]; first out of place: 4 where 3 belongs \
             (position 3)"
        );
        assert_eq!(
            check_sequence(&[1, 3, 2], 3).unwrap_err(),
            "3 numbers for 1..3; first out of place: 3 where 2 belongs (position 2)"
        );
        assert_eq!(
            check_sequence(&[1, 2], 3).unwrap_err(),
            "2 numbers for 1..3; missing: [3]"
        );
        assert_eq!(
            check_sequence(&[1, 2, 3, 4], 3).unwrap_err(),
            "4 numbers for 1..3; out of range: [4]"
        );
        assert_eq!(
            check_sequence(&[], 2).unwrap_err(),
            "0 numbers for 1..2; missing: [1, 2]"
        );
    }

    #[test]
    fn count_file() {
        assert_eq!(file_counts("1\n2\n3\n"), Ok(vec![1, 2, 3]));
        assert_eq!(file_counts(""), Ok(vec![]));
        let e = file_counts("1\n\n3\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
