//! The relay's window: rows published and not yet marked.

use std::{collections::BTreeMap, time::Instant};

use super::Row;

/// One published row, kept until its mark commits so that no fetch returns
/// it again and a nack can publish it again.
pub(super) struct Flight {
    pub(super) row: Row,
    /// When it was last published, for the confirm latency.
    pub(super) published_at: Instant,
    /// How often the broker nacked it so far.
    pub(super) nacks: usize,
}

/// Rows in flight by outbox id, at most `capacity` of them.
pub(super) struct Window {
    flights: BTreeMap<i64, Flight>,
    capacity: usize,
}

impl Window {
    pub(super) fn new(capacity: usize) -> Self {
        Window {
            flights: BTreeMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// How many more rows may be published before a confirm and mark.
    pub(super) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.flights.len())
    }

    pub(super) fn len(&self) -> usize {
        self.flights.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    pub(super) fn insert(&mut self, row: Row) {
        let flight = Flight {
            published_at: Instant::now(),
            nacks: 0,
            row,
        };
        self.flights.insert(flight.row.id, flight);
    }

    pub(super) fn get_mut(&mut self, id: i64) -> Option<&mut Flight> {
        self.flights.get_mut(&id)
    }

    /// Forgets rows whose mark committed.
    pub(super) fn remove(&mut self, ids: &[i64]) {
        for id in ids {
            self.flights.remove(id);
        }
    }

    /// The ids in flight as maximal runs of consecutive ids, `(lows, highs)`:
    /// what a fetch excludes. Ids come from one sequence, so a window of
    /// thousands is usually a handful of runs; a row committed late with an id
    /// between two runs is not covered and is found.
    pub(super) fn runs(&self) -> (Vec<i64>, Vec<i64>) {
        let (mut lows, mut highs): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
        for &id in self.flights.keys() {
            match highs.last_mut() {
                Some(high) if *high + 1 == id => *high = id,
                _ => {
                    lows.push(id);
                    highs.push(id);
                }
            }
        }
        (lows, highs)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn row(id: i64) -> Row {
        Row {
            id,
            event_id: Uuid::nil(),
            event_type: String::new(),
            payload: Vec::new(),
            headers: serde_json::Value::Null,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn runs_cover_exactly_the_ids_in_flight() {
        let mut window = Window::new(10);
        assert_eq!(window.runs(), (vec![], vec![]));
        for id in [3, 4, 5, 7, 9, 10] {
            window.insert(row(id));
        }
        assert_eq!(window.runs(), (vec![3, 7, 9], vec![5, 7, 10]));
        assert_eq!(window.room(), 4);
        window.remove(&[4, 7]);
        assert_eq!(window.runs(), (vec![3, 5, 9], vec![3, 5, 10]));
        assert_eq!(window.room(), 6);
    }

    #[test]
    fn a_full_window_has_no_room() {
        let mut window = Window::new(2);
        window.insert(row(1));
        window.insert(row(2));
        assert_eq!(window.room(), 0);
        window.insert(row(3));
        assert_eq!(window.room(), 0);
    }
}
