//! Attribution's events screened by the fraud rules: clicks counted per hashed IP, conversions
//! noted and counted per partner, reversals counted towards refund rates, and the flags these
//! raise. A run of consecutive events of one program is screened together, with the outcome
//! of screening them one at a time in order (the same events under the same ids) but one
//! append per stream instead of one per event and stream: a consumer that waited for each
//! event's appends in turn could not keep up with attribution (a sync per step).
//!
//! How a run keeps the one-at-a-time outcome: the commands on each stream are decided in the
//! run's order on the state the earlier ones leave, and the steps are ordered by what they
//! read: clicks first (a conversion's velocity rule reads the count of its own clicks, fixed
//! when each was counted, and its clicks precede it: the consumer ends a run before a click an
//! earlier conversion of the run names, which only a redelivery out of order brings), then the
//! conversion records (a reversal reads whether it is its conversion's first), then the
//! per-partner counts (a refund's rate is the one recorded with its count, so a retry reads
//! what the first attempt did), then the flags (the rules read partner profiles and licences,
//! which flags do not change). Service layer: no clock, nothing decided here.

use std::collections::{BTreeSet, HashMap};

use futures::future::try_join_all;
use pl_runtime::aggregate::{execute, Executed};
use pl_runtime::CommandMeta;
use uuid::Uuid;

use crate::activity::{
    ActivityCommand, ConversionCommand, ConversionEvent, ConversionRecord, Noted,
};
use crate::contract::{ConversionAttributed, Reversal, TouchpointRecorded};
use crate::partner::{Action, FlagDraft, PartnerCommand};
use crate::program::Settings;
use crate::rules::{self, Rule};
use crate::service::{lift, step, Compliance, ServiceError};
use crate::signals::Click;
use crate::streams;

/// One consumed attribution event, parsed, with the meta its commands derive theirs from.
#[derive(Debug, Clone)]
pub enum Screened {
    Touchpoint(TouchpointRecorded),
    Conversion(ConversionAttributed),
    /// A refund or a chargeback (`kind`: "refund" or "chargeback").
    Reversal {
        kind: &'static str,
        reversal: Reversal,
    },
}

/// A command with the tag of the event it serves.
type Tagged<T, C> = (T, C, CommandMeta);

/// Commands per stream, in the run's order, each with a tag (the event it serves).
struct Grouped<T, C> {
    groups: Vec<(String, Vec<Tagged<T, C>>)>,
    at: HashMap<String, usize>,
}

impl<T, C> Grouped<T, C> {
    fn new() -> Self {
        Self {
            groups: Vec::new(),
            at: HashMap::new(),
        }
    }

    fn push(&mut self, stream: String, tag: T, command: C, meta: CommandMeta) {
        let at = *self.at.entry(stream.clone()).or_insert_with(|| {
            self.groups.push((stream, Vec::new()));
            self.groups.len() - 1
        });
        self.groups[at].1.push((tag, command, meta));
    }

    fn commands(group: &[Tagged<T, C>]) -> Vec<(C, CommandMeta)>
    where
        C: Clone,
    {
        group
            .iter()
            .map(|(_, c, m)| (c.clone(), m.clone()))
            .collect()
    }
}

/// The distinct partners credited by a conversion, in id order.
fn partners_of(c: &ConversionAttributed) -> Vec<Uuid> {
    c.shares
        .iter()
        .map(|s| s.partner_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

impl Compliance {
    /// Screens `run` (events of one program, in delivery order) and answers the flags each
    /// event raised. All or nothing for the caller: on an error some of the run may be
    /// written, and screening it again (whole or one at a time) completes it, every command
    /// being idempotent by its derived event ids and its own keys.
    pub async fn screen(
        &self,
        run: &[(Screened, CommandMeta)],
    ) -> Result<Vec<usize>, ServiceError> {
        let store = self.store.as_ref();
        let mut settings: HashMap<Uuid, (Settings, u64)> = HashMap::new();
        for (event, _) in run {
            // Only what step 1 or 4 reads: clicks with a hashed IP, and conversions (a
            // coupon or postback must not fail because its program's settings are unreadable).
            let program_id = match event {
                Screened::Touchpoint(t) if t.kind == "click" && t.ip_hash.is_some() => t.program_id,
                Screened::Conversion(c) => c.program_id,
                Screened::Touchpoint(_) | Screened::Reversal { .. } => continue,
            };
            if let std::collections::hash_map::Entry::Vacant(e) = settings.entry(program_id) {
                e.insert(self.program(program_id).await?);
            }
        }

        // 1. Clicks with a hashed IP, counted per IP for the velocity rule.
        let mut clicks = Grouped::new();
        for (i, (event, meta)) in run.iter().enumerate() {
            let Screened::Touchpoint(t) = event else {
                continue;
            };
            let Some(ip) = t.ip_hash.as_deref().filter(|_| t.kind == "click") else {
                continue;
            };
            let Some((s, _)) = settings.get(&t.program_id) else {
                continue;
            };
            if !s.rules.click_velocity.enabled {
                continue;
            }
            let click = Click {
                touchpoint_id: t.touchpoint_id,
                partner_id: t.partner_id,
                at: t.occurred_at,
                window_seconds: s.rules.velocity_window_seconds,
                max_clicks: s.rules.max_clicks_per_ip,
            };
            clicks.push(
                streams::clicks(t.program_id, ip),
                i,
                click,
                step(meta, "click"),
            );
        }
        try_join_all(clicks.groups.iter().map(|(stream, group)| async move {
            let commands = Grouped::commands(group);
            self.caches
                .clicks
                .execute_many(store, stream, &commands, |_, _| ())
                .await
        }))
        .await
        .map_err(lift)?;

        // 2. Conversion records: a conversion noted (for its reversals), a reversal noted
        // against it. One at a time per conversion (a conversion and its refund in one run
        // are rare), conversions concurrently.
        let mut records = Grouped::new();
        for (i, (event, meta)) in run.iter().enumerate() {
            match event {
                Screened::Conversion(c) => records.push(
                    streams::conversion(c.conversion_id),
                    i,
                    ConversionCommand::Note(Noted {
                        conversion_id: c.conversion_id,
                        program_id: c.program_id,
                        partner_ids: partners_of(c),
                        occurred_at: c.occurred_at,
                    }),
                    step(meta, "note"),
                ),
                Screened::Reversal { kind, reversal } => records.push(
                    streams::conversion(reversal.conversion_id),
                    i,
                    ConversionCommand::Reverse {
                        reversal_id: reversal.reversal_id,
                        kind: (*kind).to_owned(),
                        at: reversal.occurred_at,
                    },
                    step(meta, "reverse"),
                ),
                Screened::Touchpoint(_) => {}
            }
        }
        let noted: Vec<Vec<(usize, Executed<ConversionRecord, ConversionEvent>)>> =
            try_join_all(records.groups.iter().map(|(stream, group)| async move {
                let mut done = Vec::with_capacity(group.len());
                for (i, command, meta) in group {
                    let executed = execute::<ConversionRecord>(store, stream, command, meta)
                        .await
                        .map_err(lift)?;
                    done.push((*i, executed));
                }
                Ok::<_, ServiceError>(done)
            }))
            .await?;
        // A reversal counts when it is its conversion's first: the conversion as noted.
        let mut first_reversals: HashMap<usize, Noted> = HashMap::new();
        for (i, done) in noted.into_iter().flatten() {
            if !matches!(run[i].0, Screened::Reversal { .. }) {
                continue;
            }
            let first = done
                .events
                .iter()
                .any(|e| matches!(e, ConversionEvent::ReversalNoted(n) if n.first));
            if let Some(n) = done.state.noted.filter(|_| first) {
                first_reversals.insert(i, n);
            }
        }
        for n in first_reversals.values() {
            if let std::collections::hash_map::Entry::Vacant(e) = settings.entry(n.program_id) {
                e.insert(self.program(n.program_id).await?);
            }
        }

        // 3. Per-partner counts: conversions, and first reversals where the refund rate rule
        // is on, each refund with the window's counts recorded when it was counted.
        let mut activity = Grouped::new();
        for (i, (event, meta)) in run.iter().enumerate() {
            match event {
                Screened::Conversion(c) => {
                    for p in partners_of(c) {
                        activity.push(
                            streams::activity(p),
                            (i, p),
                            ActivityCommand::Count {
                                conversion_id: c.conversion_id,
                                day: c.occurred_at.date_naive(),
                            },
                            step(meta, &format!("count:{p}")),
                        );
                    }
                }
                Screened::Reversal { reversal, .. } => {
                    let Some(n) = first_reversals.get(&i) else {
                        continue;
                    };
                    let Some((s, _)) = settings.get(&n.program_id) else {
                        continue;
                    };
                    if !s.rules.refund_rate.enabled {
                        continue;
                    }
                    for p in &n.partner_ids {
                        activity.push(
                            streams::activity(*p),
                            (i, *p),
                            ActivityCommand::Refund {
                                conversion_id: n.conversion_id,
                                conversion_day: n.occurred_at.date_naive(),
                                refund_day: reversal.occurred_at.date_naive(),
                                window_days: s.rules.refund_window_days,
                            },
                            step(meta, &format!("refund:{p}")),
                        );
                    }
                }
                Screened::Touchpoint(_) => {}
            }
        }
        let windows = try_join_all(activity.groups.iter().map(|(stream, group)| async move {
            let commands = Grouped::commands(group);
            let done = self
                .caches
                .activity
                .execute_each(store, stream, &commands, |a, j| match &commands[j].0 {
                    // Where nothing is recorded (the conversion's day is past retention),
                    // the window as it is, as before.
                    ActivityCommand::Refund {
                        conversion_id,
                        conversion_day,
                        refund_day,
                        window_days,
                    } => a
                        .refund_window(*conversion_id, *conversion_day)
                        .or_else(|| Some(a.window(*refund_day, *window_days))),
                    ActivityCommand::Count { .. } => None,
                })
                .await?;
            Ok(done.views)
        }))
        .await
        .map_err(lift)?;
        // (event, partner) → (conversions, refunded) in the refund's window.
        let refund_counts: HashMap<(usize, Uuid), (u32, u32)> = activity
            .groups
            .iter()
            .zip(windows)
            .flat_map(|((_, group), views)| {
                group
                    .iter()
                    .zip(views)
                    .filter_map(|((tag, _, _), view)| Some((*tag, view?)))
            })
            .collect();

        // 4. The rules, and the flags they raise, per partner in the run's order.
        let mut flags = vec![0_usize; run.len()];
        let mut raised = Grouped::new();
        for (i, (event, meta)) in run.iter().enumerate() {
            match event {
                Screened::Conversion(c) => {
                    let Some((s, version)) = settings.get(&c.program_id) else {
                        continue;
                    };
                    for p in partners_of(c) {
                        let findings = self.conversion_findings(c, p, s).await?;
                        if findings.is_empty() {
                            continue;
                        }
                        let drafts: Vec<FlagDraft> = findings
                            .into_iter()
                            .map(|mut f| {
                                f.evidence
                                    .insert("settings_version".into(), version.to_string());
                                FlagDraft {
                                    flag_id: streams::flag_id(
                                        f.rule.as_str(),
                                        p,
                                        &c.conversion_id.to_string(),
                                    ),
                                    conversion_id: Some(c.conversion_id),
                                    program_id: c.program_id,
                                    outcome: s.rules.setting(f.rule).outcome,
                                    finding: f,
                                }
                            })
                            .collect();
                        flags[i] += drafts.len();
                        raised.push(
                            streams::partner(p),
                            i,
                            PartnerCommand {
                                partner_id: p,
                                at: c.occurred_at,
                                action: Action::Raise(drafts),
                            },
                            step(meta, &format!("flags:{p}")),
                        );
                    }
                }
                Screened::Reversal { reversal, .. } => {
                    let Some(n) = first_reversals.get(&i) else {
                        continue;
                    };
                    let Some((s, version)) = settings.get(&n.program_id) else {
                        continue;
                    };
                    let refund_day = reversal.occurred_at.date_naive();
                    for p in &n.partner_ids {
                        let Some(&(conversions, refunded)) = refund_counts.get(&(i, *p)) else {
                            continue;
                        };
                        let Some(mut finding) =
                            rules::refund_rate(conversions, refunded, &s.rules, refund_day)
                        else {
                            continue;
                        };
                        finding
                            .evidence
                            .insert("settings_version".into(), version.to_string());
                        finding
                            .evidence
                            .insert("reversal_id".into(), reversal.reversal_id.to_string());
                        flags[i] += 1;
                        raised.push(
                            streams::partner(*p),
                            i,
                            PartnerCommand {
                                partner_id: *p,
                                at: reversal.occurred_at,
                                action: Action::Raise(vec![FlagDraft {
                                    flag_id: streams::flag_id(
                                        Rule::RefundRate.as_str(),
                                        *p,
                                        &reversal.reversal_id.to_string(),
                                    ),
                                    conversion_id: None,
                                    program_id: n.program_id,
                                    outcome: s.rules.refund_rate.outcome,
                                    finding,
                                }]),
                            },
                            step(meta, &format!("flags:{p}")),
                        );
                    }
                }
                Screened::Touchpoint(_) => {}
            }
        }
        try_join_all(raised.groups.iter().map(|(stream, group)| async move {
            let commands = Grouped::commands(group);
            self.caches
                .partners
                .execute_many(store, stream, &commands, |_, _| ())
                .await
        }))
        .await
        .map_err(lift)?;
        Ok(flags)
    }
}
