//! 64-bit snowflake ids in Effect's layout.
//!
//! `((ms since 2025-01-01T00:00:00Z) << 22) | (machine_id << 12) | sequence`: 42 bits of time,
//! 10 bits of machine id, 12 bits of sequence. Ids from one [`Generator`] are strictly
//! increasing, even when the wall clock steps back.

use crate::clock::now_ms;

/// 2025-01-01T00:00:00Z in milliseconds since the Unix epoch (Effect's `constEpochMillis`).
pub const EPOCH_MS: u64 = 1_735_689_600_000;
/// Number of distinct machine ids (10 bits).
pub const MACHINE_IDS: u64 = 1 << 10;
/// Number of ids per machine per millisecond (12 bits).
pub const SEQUENCES: u64 = 1 << 12;
/// Largest representable offset from [`EPOCH_MS`] (42 bits).
pub const MAX_OFFSET_MS: u64 = (1 << 42) - 1;
/// The most ids one [`Generator::next_many`] call makes: 256 ms of one machine's id space,
/// so a batch never runs its ids far ahead of the clock.
pub const MAX_BATCH: usize = 1 << 20;

const TIMESTAMP_SHIFT: u32 = 22;
const MACHINE_SHIFT: u32 = 12;

/// Errors building or generating snowflakes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The machine id does not fit in 10 bits.
    #[error("machine id {0} is out of range: it must be in 0..=1023")]
    MachineIdOutOfRange(i64),
    /// The sequence does not fit in 12 bits.
    #[error("sequence {0} is out of range: it must be in 0..=4095")]
    SequenceOutOfRange(i64),
    /// The timestamp is before 2025-01-01T00:00:00Z or past the 42-bit range.
    #[error(
        "timestamp {0} ms since the Unix epoch is out of range: snowflakes cover \
         2025-01-01T00:00:00Z ({EPOCH_MS}) to {max} ms",
        max = EPOCH_MS + MAX_OFFSET_MS
    )]
    TimestampOutOfRange(i64),
    /// A batch larger than [`MAX_BATCH`].
    #[error("{0} ids asked for in one call; at most {MAX_BATCH} per call")]
    BatchTooLarge(usize),
}

/// The three fields of a snowflake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The generating machine, `0..1024`.
    pub machine_id: u16,
    /// The sequence within the millisecond, `0..4096`.
    pub sequence: u16,
}

/// Checks a machine id and narrows it to 10 bits.
///
/// # Errors
/// [`Error::MachineIdOutOfRange`] outside `0..=1023`.
pub fn machine_id(value: i64) -> Result<u16, Error> {
    u16::try_from(value)
        .ok()
        .filter(|&m| u64::from(m) < MACHINE_IDS)
        .ok_or(Error::MachineIdOutOfRange(value))
}

/// Builds a snowflake from its parts.
///
/// # Errors
/// When a part is out of range: timestamp before 2025-01-01 or past 42 bits, machine id
/// past 10 bits, sequence past 12 bits.
///
/// # Example
/// ```
/// // 2025-06-01T12:00:00Z, machine 7, sequence 42
/// assert_eq!(_native::snowflake::make(1_748_779_200_000, 7, 42), Ok(54_901_761_638_428_714));
/// ```
pub fn make(timestamp_ms: i64, machine: i64, sequence: i64) -> Result<u64, Error> {
    let offset = u64::try_from(timestamp_ms)
        .ok()
        .and_then(|t| t.checked_sub(EPOCH_MS))
        .filter(|&o| o <= MAX_OFFSET_MS)
        .ok_or(Error::TimestampOutOfRange(timestamp_ms))?;
    let machine = machine_id(machine)?;
    let sequence = u16::try_from(sequence)
        .ok()
        .filter(|&s| u64::from(s) < SEQUENCES)
        .ok_or(Error::SequenceOutOfRange(sequence))?;
    Ok(compose(offset, machine, sequence))
}

fn compose(offset_ms: u64, machine: u16, sequence: u16) -> u64 {
    (offset_ms << TIMESTAMP_SHIFT) | (u64::from(machine) << MACHINE_SHIFT) | u64::from(sequence)
}

/// Splits a snowflake into its parts.
pub fn parts(snowflake: u64) -> Parts {
    #[allow(clippy::cast_possible_truncation)] // masked to 10 and 12 bits
    Parts {
        timestamp_ms: (snowflake >> TIMESTAMP_SHIFT) + EPOCH_MS,
        machine_id: ((snowflake >> MACHINE_SHIFT) % MACHINE_IDS) as u16,
        sequence: (snowflake % SEQUENCES) as u16,
    }
}

/// A generator of strictly increasing snowflakes for one machine id.
///
/// When the wall clock steps back, the generator keeps using its last timestamp; when 4096 ids
/// are taken within one millisecond, it moves on to the next millisecond (ids may then run a
/// little ahead of the clock, never behind the last id).
#[derive(Debug, Clone)]
pub struct Generator {
    machine: u16,
    last_offset_ms: u64,
    sequence: u16,
}

impl Generator {
    /// A generator for `machine`.
    ///
    /// # Errors
    /// [`Error::MachineIdOutOfRange`] outside `0..=1023`.
    pub fn new(machine: i64) -> Result<Self, Error> {
        Ok(Self {
            machine: machine_id(machine)?,
            last_offset_ms: 0,
            sequence: 0,
        })
    }

    /// The machine id stamped into every id.
    pub fn machine_id(&self) -> u16 {
        self.machine
    }

    /// Replaces the machine id (a runner learns its id when it registers).
    ///
    /// # Errors
    /// [`Error::MachineIdOutOfRange`] outside `0..=1023`.
    pub fn set_machine_id(&mut self, machine: i64) -> Result<(), Error> {
        self.machine = machine_id(machine)?;
        Ok(())
    }

    /// The next id, from the wall clock.
    ///
    /// # Errors
    /// [`Error::TimestampOutOfRange`] when the clock is before 2025 or past the 42-bit range.
    pub fn next_id(&mut self) -> Result<u64, Error> {
        self.next_at(now_ms())
    }

    /// The next id, taking `now_ms` (ms since the Unix epoch) as the current time.
    ///
    /// # Errors
    /// [`Error::TimestampOutOfRange`] when `now_ms` is before 2025 or past the 42-bit range.
    pub fn next_at(&mut self, now_ms: u64) -> Result<u64, Error> {
        let offset = now_ms
            .checked_sub(EPOCH_MS)
            .filter(|&o| o <= MAX_OFFSET_MS)
            .ok_or(Error::TimestampOutOfRange(
                i64::try_from(now_ms).unwrap_or(i64::MAX),
            ))?;
        if offset > self.last_offset_ms {
            self.last_offset_ms = offset;
            self.sequence = 0;
        } else if u64::from(self.sequence) + 1 < SEQUENCES {
            // Same millisecond, or the clock stepped back: keep the last timestamp.
            self.sequence += 1;
        } else {
            if self.last_offset_ms == MAX_OFFSET_MS {
                return Err(Error::TimestampOutOfRange(
                    i64::try_from(EPOCH_MS + MAX_OFFSET_MS + 1).unwrap_or(i64::MAX),
                ));
            }
            self.last_offset_ms += 1;
            self.sequence = 0;
        }
        Ok(compose(self.last_offset_ms, self.machine, self.sequence))
    }

    /// `count` ids in increasing order, reading the clock once.
    ///
    /// # Errors
    /// [`Error::BatchTooLarge`] past [`MAX_BATCH`]; otherwise as [`Generator::next_at`].
    pub fn next_many(&mut self, count: usize) -> Result<Vec<u64>, Error> {
        if count > MAX_BATCH {
            return Err(Error::BatchTooLarge(count));
        }
        let now = now_ms();
        (0..count).map(|_| self.next_at(now)).collect()
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)] // test values are small and far below 2^63
mod tests {
    use proptest::prelude::*;

    use super::*;

    const JUNE_1_NOON: u64 = 1_748_779_200_000; // 2025-06-01T12:00:00Z

    /// Effect's vector (`tests/vectors/effect.json`: `@effect/cluster`'s snowflake).
    #[test]
    fn effect_vector() {
        let v = crate::vectors::effect()["snowflake"].clone();
        let (ts, machine, seq) = (
            v["timestamp_ms"].as_i64().unwrap(),
            v["machine_id"].as_i64().unwrap(),
            v["sequence"].as_i64().unwrap(),
        );
        let expected = v["snowflake"].as_u64().unwrap();
        assert_eq!(make(ts, machine, seq), Ok(expected));
        assert_eq!(
            parts(expected),
            Parts {
                timestamp_ms: ts as u64,
                machine_id: machine as u16,
                sequence: seq as u16
            }
        );
        assert_eq!(ts as u64, JUNE_1_NOON);
    }

    #[test]
    fn epoch_is_zero_and_extremes_round_trip() {
        assert_eq!(make(EPOCH_MS as i64, 0, 0), Ok(0));
        let max = make((EPOCH_MS + MAX_OFFSET_MS) as i64, 1023, 4095).unwrap();
        assert_eq!(max, u64::MAX);
        let p = parts(max);
        assert_eq!(
            (p.timestamp_ms, p.machine_id, p.sequence),
            (EPOCH_MS + MAX_OFFSET_MS, 1023, 4095)
        );
    }

    #[test]
    fn out_of_range_parts_are_named() {
        assert_eq!(
            make(EPOCH_MS as i64, 1024, 0),
            Err(Error::MachineIdOutOfRange(1024))
        );
        assert_eq!(
            make(EPOCH_MS as i64, -1, 0),
            Err(Error::MachineIdOutOfRange(-1))
        );
        assert_eq!(
            make(EPOCH_MS as i64, 0, 4096),
            Err(Error::SequenceOutOfRange(4096))
        );
        assert_eq!(
            make(EPOCH_MS as i64 - 1, 0, 0),
            Err(Error::TimestampOutOfRange(EPOCH_MS as i64 - 1))
        );
        let past = (EPOCH_MS + MAX_OFFSET_MS + 1) as i64;
        assert_eq!(make(past, 0, 0), Err(Error::TimestampOutOfRange(past)));
        assert!(Error::MachineIdOutOfRange(1024)
            .to_string()
            .contains("1024"));
        assert_eq!(
            Generator::new(5000).unwrap_err(),
            Error::MachineIdOutOfRange(5000)
        );
    }

    #[test]
    fn sequence_resets_each_new_millisecond() {
        let mut g = Generator::new(3).unwrap();
        let a = g.next_at(JUNE_1_NOON).unwrap();
        let b = g.next_at(JUNE_1_NOON).unwrap();
        let c = g.next_at(JUNE_1_NOON + 1).unwrap();
        assert_eq!(parts(a).sequence, 0);
        assert_eq!(parts(b).sequence, 1);
        assert_eq!(
            parts(c),
            Parts {
                timestamp_ms: JUNE_1_NOON + 1,
                machine_id: 3,
                sequence: 0
            }
        );
    }

    #[test]
    fn clock_stepping_back_keeps_the_last_timestamp() {
        let mut g = Generator::new(1).unwrap();
        let a = g.next_at(JUNE_1_NOON + 10_000).unwrap();
        let b = g.next_at(JUNE_1_NOON).unwrap(); // clock went back ten seconds
        assert!(b > a);
        assert_eq!(parts(b).timestamp_ms, JUNE_1_NOON + 10_000);
        assert_eq!(parts(b).sequence, 1);
    }

    #[test]
    fn sequence_overflow_bumps_the_millisecond() {
        let mut g = Generator::new(9).unwrap();
        let ids: Vec<u64> = (0..SEQUENCES + 2)
            .map(|_| g.next_at(JUNE_1_NOON).unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            parts(ids[4095]),
            Parts {
                timestamp_ms: JUNE_1_NOON,
                machine_id: 9,
                sequence: 4095
            }
        );
        assert_eq!(
            parts(ids[4096]),
            Parts {
                timestamp_ms: JUNE_1_NOON + 1,
                machine_id: 9,
                sequence: 0
            }
        );
        assert_eq!(parts(ids[4097]).sequence, 1);
        // The clock catching up to the bumped millisecond continues the sequence.
        let next = g.next_at(JUNE_1_NOON + 1).unwrap();
        assert_eq!(parts(next).sequence, 2);
    }

    #[test]
    fn clock_before_2025_is_an_error() {
        let mut g = Generator::new(0).unwrap();
        assert!(matches!(g.next_at(0), Err(Error::TimestampOutOfRange(0))));
    }

    #[test]
    fn set_machine_id_changes_later_ids() {
        let mut g = Generator::new(0).unwrap();
        g.set_machine_id(1023).unwrap();
        assert_eq!(parts(g.next_at(JUNE_1_NOON).unwrap()).machine_id, 1023);
        assert_eq!(
            g.set_machine_id(1024),
            Err(Error::MachineIdOutOfRange(1024))
        );
        assert_eq!(g.machine_id(), 1023);
    }

    #[test]
    fn next_many_is_increasing_and_from_the_wall_clock() {
        let mut g = Generator::new(2).unwrap();
        let before = now_ms();
        let ids = g.next_many(10_000).unwrap();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(parts(ids[0]).timestamp_ms >= before);
        assert_eq!(
            g.next_many(MAX_BATCH + 1),
            Err(Error::BatchTooLarge(MAX_BATCH + 1))
        );
    }

    proptest! {
        #[test]
        fn make_and_parts_round_trip(offset in 0..=MAX_OFFSET_MS, machine in 0..1024i64, seq in 0..4096i64) {
            let id = make((EPOCH_MS + offset) as i64, machine, seq).unwrap();
            let p = parts(id);
            prop_assert_eq!(p.timestamp_ms, EPOCH_MS + offset);
            prop_assert_eq!(i64::from(p.machine_id), machine);
            prop_assert_eq!(i64::from(p.sequence), seq);
        }

        #[test]
        fn ids_increase_whatever_the_clock_does(steps in proptest::collection::vec(-5_000i64..5_000, 1..300)) {
            let mut g = Generator::new(4).unwrap();
            let mut now = JUNE_1_NOON as i64;
            let mut last = 0u64;
            for step in steps {
                now += step;
                let id = g.next_at(now as u64).unwrap();
                prop_assert!(id > last);
                last = id;
            }
        }
    }
}
