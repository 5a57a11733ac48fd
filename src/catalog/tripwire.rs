//! The tripwire's state (`src/tripwire`): each judged run with its measures, verdict and
//! acknowledgement (each file's traits are in the file cache).

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};

use super::*;

/// A judged backup run.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedRun {
    pub run: i64,
    pub job: String,
    pub snapshot: Option<String>,
    pub at: i64,
    /// `first`, `not-enough-history`, `clean` or `suspicious`.
    pub verdict: String,
    /// JSON, as the tripwire wrote it (and as input: it is parsed, never trusted).
    pub measures: String,
    /// JSON: the signals that fired.
    pub signals: String,
    pub acked_at: Option<i64>,
    pub ack_reason: Option<String>,
    pub false_alarm: bool,
}

const COLUMNS: &str = "run, job, snapshot, at, verdict, measures, signals, acked_at, ack_reason, false_alarm";

fn judged(r: &rusqlite::Row) -> rusqlite::Result<JudgedRun> {
    Ok(JudgedRun {
        run: r.get(0)?,
        job: r.get(1)?,
        snapshot: r.get(2)?,
        at: r.get(3)?,
        verdict: r.get(4)?,
        measures: r.get(5)?,
        signals: r.get(6)?,
        acked_at: r.get(7)?,
        ack_reason: r.get(8)?,
        false_alarm: r.get(9)?,
    })
}

impl Catalog {
    pub fn record_judgement(&self, j: &JudgedRun) -> Result<()> {
        self.conn.execute(
            &format!("INSERT INTO tripwire_runs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                j.run,
                j.job,
                j.snapshot,
                j.at,
                j.verdict,
                j.measures,
                j.signals,
                j.acked_at,
                j.ack_reason,
                j.false_alarm
            ],
        )?;
        if j.verdict == "suspicious" {
            insert_event(&self.conn, "anomalous-change", Some(&j.job), &format!("run {}: {}", j.run, j.signals))?;
        }
        Ok(())
    }

    /// The job's baseline: its last `n` runs judged against a previous snapshot that did
    /// not trip (or tripped and were acknowledged as false alarms), newest first.
    pub fn tripwire_baseline(&self, job: &str, n: u32) -> Result<Vec<JudgedRun>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM tripwire_runs
             WHERE job = ?1 AND (verdict IN ('not-enough-history', 'clean') OR (verdict = 'suspicious' AND false_alarm = 1))
             ORDER BY run DESC LIMIT ?2"
        ))?;
        Ok(st.query_map(params![job, n], judged)?.collect::<rusqlite::Result<_>>()?)
    }

    /// Suspicious runs (of `job`, or of every job), oldest first; only those nobody
    /// acknowledged yet when `open`.
    pub fn anomalies(&self, job: Option<&str>, open: bool) -> Result<Vec<JudgedRun>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM tripwire_runs
             WHERE verdict = 'suspicious' AND (?1 IS NULL OR job = ?1) AND (?2 = 0 OR acked_at IS NULL)
             ORDER BY run"
        ))?;
        Ok(st.query_map(params![job, open], judged)?.collect::<rusqlite::Result<_>>()?)
    }

    /// Acknowledges a suspicious run of `job`: a person looked, and says why.
    pub fn acknowledge(&self, job: &str, run: i64, reason: &str, false_alarm: bool, at: i64) -> Result<()> {
        let found: Option<(String, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT verdict, acked_at FROM tripwire_runs WHERE job = ?1 AND run = ?2",
                params![job, run],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match found {
            None => bail!("run {run} of job `{job}` was not judged by the tripwire (see `coffer runs {job}`)"),
            Some((verdict, _)) if verdict != "suspicious" => {
                bail!("run {run} of job `{job}` is not suspicious (its verdict: {verdict}); nothing to acknowledge")
            }
            Some((_, Some(when))) => {
                bail!("run {run} of job `{job}` was acknowledged already, at {}", crate::time::format_utc(when))
            }
            Some(_) => {}
        }
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE tripwire_runs SET acked_at = ?3, ack_reason = ?4, false_alarm = ?5 WHERE job = ?1 AND run = ?2",
            params![job, run, at, reason, false_alarm],
        )?;
        let what = if false_alarm { "acknowledged as a false alarm" } else { "acknowledged" };
        insert_event(&tx, "anomaly-acknowledged", Some(job), &format!("run {run} {what}: {reason}"))?;
        tx.commit()?;
        Ok(())
    }

    /// How many of the job's trips were acknowledged as false alarms.
    pub fn false_alarms(&self, job: &str) -> Result<u32> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM tripwire_runs WHERE job = ?1 AND verdict = 'suspicious' AND false_alarm = 1",
            [job],
            |r| r.get(0),
        )?)
    }

    /// Keeps a snapshot at least until `until` (its locks were extended that far).
    pub fn hold_snapshot(&self, id: &str, until: i64, job: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE snapshots SET retain_until = max(coalesce(retain_until, 0), ?2) WHERE id = ?1",
            params![id, until],
        )?;
        let detail = format!("snapshot {id} held until {} after an anomalous change", crate::time::format_utc(until));
        insert_event(&tx, "held", Some(job), &detail)?;
        tx.commit()?;
        Ok(())
    }

    /// Jobs whose prune is frozen: a suspicious run nobody acknowledged.
    pub fn frozen_jobs(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare(
            "SELECT DISTINCT job FROM tripwire_runs WHERE verdict = 'suspicious' AND acked_at IS NULL ORDER BY job",
        )?;
        Ok(st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }

    /// The ids of snapshots stored by suspicious runs (acknowledged or not, unless a
    /// false alarm).
    pub fn suspicious_snapshots(&self) -> Result<HashSet<String>> {
        let mut st = self.conn.prepare(
            "SELECT snapshot FROM tripwire_runs WHERE verdict = 'suspicious' AND false_alarm = 0
                                                  AND snapshot IS NOT NULL",
        )?;
        Ok(st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cat: &Catalog, job: &str) -> i64 {
        cat.start_run(&RunStart::backup(job, Trigger::Manual, None)).unwrap()
    }

    fn judged_run(run: i64, verdict: &str) -> JudgedRun {
        JudgedRun {
            run,
            job: "j".into(),
            snapshot: Some(format!("s{run}")),
            at: run,
            verdict: verdict.into(),
            measures: "{}".into(),
            signals: "[]".into(),
            acked_at: None,
            ack_reason: None,
            false_alarm: false,
        }
    }

    #[test]
    fn a_frozen_job_forgets_nothing_and_latest_clean_passes_over_the_trip() {
        let (mut cat, _) = super::super::tests::temp_catalog();
        let snap = |id: &str, until: i64| super::super::tests::snapshot_row(id, Some(until));
        for (id, until) in [("old", 10), ("clean", 10_000), ("bad", 10_000)] {
            cat.complete_snapshot(&snap(id, until), &[], &HashSet::new(), std::iter::empty(), |_| Ok(true), None)
                .unwrap();
        }
        let r = run(&cat, "j");
        cat.record_judgement(&JudgedRun { snapshot: Some("bad".into()), ..judged_run(r, "suspicious") }).unwrap();
        assert_eq!(cat.frozen_jobs().unwrap(), ["j"]);
        assert!(cat.forget_expired(100).unwrap().is_empty(), "frozen: `old` stays");
        assert_eq!(cat.find_snapshot("j", "latest").unwrap().id, "bad");
        assert_eq!(cat.find_snapshot("j", "latest-clean").unwrap().id, "clean");
        cat.acknowledge("j", r, "looked", false, 50).unwrap();
        assert!(cat.frozen_jobs().unwrap().is_empty());
        assert_eq!(cat.forget_expired(100).unwrap(), ["old"]);
        assert_eq!(cat.find_snapshot("j", "latest-clean").unwrap().id, "clean", "still suspicious");
    }

    #[test]
    fn a_trip_stays_open_until_acknowledged_once() {
        let (cat, _) = super::super::tests::temp_catalog();
        let ids: Vec<i64> = (0..3).map(|_| run(&cat, "j")).collect();
        cat.record_judgement(&judged_run(ids[0], "clean")).unwrap();
        cat.record_judgement(&judged_run(ids[1], "suspicious")).unwrap();
        cat.record_judgement(&judged_run(ids[2], "clean")).unwrap();
        assert_eq!(cat.anomalies(Some("j"), true).unwrap().len(), 1);
        assert_eq!(cat.suspicious_snapshots().unwrap(), HashSet::from([format!("s{}", ids[1])]));
        assert_eq!(cat.tripwire_baseline("j", 5).unwrap().iter().map(|r| r.run).collect::<Vec<_>>(), [ids[2], ids[0]]);
        let e = cat.acknowledge("j", ids[0], "x", false, 9).unwrap_err().to_string();
        assert!(e.contains("not suspicious"), "{e}");
        cat.acknowledge("j", ids[1], "a test of the backups", true, 9).unwrap();
        let e = cat.acknowledge("j", ids[1], "again", true, 10).unwrap_err().to_string();
        assert!(e.contains("acknowledged already"), "{e}");
        assert!(cat.anomalies(Some("j"), true).unwrap().is_empty());
        assert_eq!(cat.false_alarms("j").unwrap(), 1);
        // A false alarm is part of the baseline, and its snapshot is not suspicious.
        assert_eq!(cat.tripwire_baseline("j", 5).unwrap().len(), 3);
        assert!(cat.suspicious_snapshots().unwrap().is_empty());
    }
}
