//! Lays a graph out for drawing, on the server: a job's column is the longest path from a
//! root to it (GitLab's pipeline graph), rows in a column follow the average row of the
//! job's needs (one barycentre pass, which keeps most edges short), and each edge is a cubic
//! curve from the right side of the need to the left side of the job. No library and no
//! layout in the browser: a 1,000-job graph is laid out in well under a millisecond.

use std::collections::HashMap;

/// Size of a job's box and the gaps between boxes, in pixels.
pub const BOX_W: u32 = 168;
pub const BOX_H: u32 = 34;
const GAP_X: u32 = 56;
const GAP_Y: u32 = 8;

/// Where a job is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub column: u32,
    pub row: u32,
    pub x: u32,
    pub y: u32,
}

/// A laid-out graph: one place per job (in the order given) and the canvas size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub places: Vec<Place>,
    pub width: u32,
    pub height: u32,
    pub columns: u32,
}

/// Lays out `n` jobs (indices `0..n`) with `edges` as `(need, job)` index pairs. Edges
/// naming an index out of range are ignored; a cycle (which validation refuses) leaves the
/// jobs on it in column 0 rather than looping.
pub fn layout(n: usize, edges: &[(usize, usize)]) -> Layout {
    let mut needs: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(need, job) in edges {
        if need < n && job < n && need != job {
            needs[job].push(need);
            dependents[need].push(job);
        }
    }
    // Kahn's order; the column is settled when the last need is.
    let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut column = vec![0u32; n];
    let mut order: Vec<usize> = (0..n).filter(|&j| waiting[j] == 0).collect();
    let mut i = 0;
    while i < order.len() {
        let job = order[i];
        i += 1;
        for &d in &dependents[job] {
            column[d] = column[d].max(column[job] + 1);
            waiting[d] -= 1;
            if waiting[d] == 0 {
                order.push(d);
            }
        }
    }
    let columns = column.iter().copied().max().map_or(0, |c| c + 1);
    let mut by_column: Vec<Vec<usize>> = vec![Vec::new(); columns as usize];
    for (job, &c) in column.iter().enumerate() {
        by_column[c as usize].push(job);
    }
    let mut row = vec![0u32; n];
    for jobs in &mut by_column {
        // Column 0 keeps the given (submission) order; later columns sit near their needs.
        let key = |job: usize| -> f64 {
            let ns = &needs[job];
            if ns.is_empty() {
                return f64::MAX;
            }
            ns.iter().map(|&k| f64::from(row[k])).sum::<f64>() / ns.len() as f64
        };
        let mut keyed: Vec<(f64, usize)> = jobs.iter().map(|&j| (key(j), j)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (r, (_, job)) in keyed.iter().enumerate() {
            row[*job] = r as u32;
        }
        *jobs = keyed.into_iter().map(|(_, j)| j).collect();
    }
    let rows = by_column.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let places = (0..n)
        .map(|j| Place {
            column: column[j],
            row: row[j],
            x: column[j] * (BOX_W + GAP_X),
            y: row[j] * (BOX_H + GAP_Y),
        })
        .collect();
    Layout {
        places,
        width: (columns * (BOX_W + GAP_X)).saturating_sub(GAP_X).max(BOX_W),
        height: (rows * (BOX_H + GAP_Y)).saturating_sub(GAP_Y).max(BOX_H),
        columns,
    }
}

/// The SVG path of the edge from `need` to `job`.
pub fn edge_path(need: Place, job: Place) -> String {
    let (x1, y1) = (need.x + BOX_W, need.y + BOX_H / 2);
    let (x2, y2) = (job.x, job.y + BOX_H / 2);
    let mid = (x1 + x2) / 2;
    format!("M{x1} {y1}C{mid} {y1} {mid} {y2} {x2} {y2}")
}

/// Index of each id in `ids`, to turn id edges into index edges.
pub fn index_of(ids: &[i64]) -> HashMap<i64, usize> {
    ids.iter().enumerate().map(|(i, &id)| (id, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_longest_paths_from_a_root() {
        // a -> b -> c, a -> c, d alone
        let l = layout(4, &[(0, 1), (1, 2), (0, 2)]);
        let cols: Vec<u32> = l.places.iter().map(|p| p.column).collect();
        assert_eq!(cols, vec![0, 1, 2, 0]);
        assert_eq!(l.columns, 3);
    }

    #[test]
    fn no_two_jobs_share_a_place() {
        let edges: Vec<(usize, usize)> = (1..200).map(|j| (j / 8, j)).collect();
        let l = layout(200, &edges);
        let mut seen = std::collections::HashSet::new();
        for p in &l.places {
            assert!(seen.insert((p.column, p.row)), "two jobs at {p:?}");
            assert!(p.x + BOX_W <= l.width && p.y + BOX_H <= l.height);
        }
    }

    #[test]
    fn a_deep_chain_gets_a_column_per_level() {
        let edges: Vec<(usize, usize)> = (1..27).map(|j| (j - 1, j)).collect();
        let l = layout(27, &edges);
        assert_eq!(l.columns, 27);
        assert!(l.places.iter().all(|p| p.row == 0));
    }

    #[test]
    fn a_cycle_or_a_stray_edge_does_not_hang() {
        let l = layout(3, &[(0, 1), (1, 0), (2, 9)]);
        assert_eq!(l.places.len(), 3);
    }

    #[test]
    fn dependents_sit_near_their_needs() {
        // roots a, b; c needs b only: c goes to row 0 of column 1 but next to b's row.
        let l = layout(4, &[(1, 2), (0, 3)]);
        assert_eq!(l.places[3].row, 0, "d needs a (row 0)");
        assert_eq!(l.places[2].row, 1, "c needs b (row 1)");
    }

    #[test]
    fn edges_run_from_the_right_of_the_need_to_the_left_of_the_job() {
        let l = layout(2, &[(0, 1)]);
        let d = edge_path(l.places[0], l.places[1]);
        assert!(d.starts_with(&format!("M{} {}", BOX_W, BOX_H / 2)), "{d}");
        assert!(
            d.ends_with(&format!("{} {}", BOX_W + GAP_X, BOX_H / 2)),
            "{d}"
        );
    }
}
