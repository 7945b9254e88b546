//! The application layer: gathers what a decision needs from compliance's own streams (a
//! program's settings, a partner's file, click and identity signals), runs the pure rules and
//! deciders, and appends. gRPC handlers and the bus consumer both go through here. It never
//! reads another service's streams, never reads the clock (instants arrive with requests and
//! consumed events), and derives every event id from the request key or the consumed event.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pl_eventlog::{LogError, SharedStore};
use pl_runtime::aggregate::{execute, ExecuteError, Executed};
use pl_runtime::{CommandMeta, StateCache};
use uuid::Uuid;

use crate::activity::{ConversionError, PartnerActivity};
use crate::contract::{ConversionAttributed, PartnerApplied};
use crate::partner::{
    Action, FlagDraft, PartnerCommand, PartnerError, PartnerEvent, PartnerFile, Profile, Screening,
    SYSTEM,
};
use crate::program::{Program, ProgramError, Settings};
use crate::rules::{self, CustomerIdentity, Finding, PartnerIdentity, Rule};
use crate::sanctions::SanctionsList;
use crate::signals::{Claim, Clicks, Identity};
use crate::streams;
use crate::verification::VerificationKind;

/// Streams kept in memory per kind.
const CACHED_PARTNERS: usize = 16_384;
const CACHED_PROGRAMS: usize = 1_024;
const CACHED_ACTIVITY: usize = 16_384;
/// Click streams hold up to `KEPT_CLICKS` instants each: fewer of them are kept.
const CACHED_CLICKS: usize = 4_096;

#[derive(Debug)]
pub struct Caches {
    pub partners: StateCache<PartnerFile>,
    pub programs: StateCache<Program>,
    pub activity: StateCache<PartnerActivity>,
    pub clicks: StateCache<Clicks>,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            partners: StateCache::new(CACHED_PARTNERS),
            programs: StateCache::new(CACHED_PROGRAMS),
            // States bounded by their own windows (recent activity, the last clicks): a long
            // stream is no larger than a short one, so no event budget (it would drop a
            // flooded IP's stream and replay its whole history on its next click).
            activity: StateCache::with_limits(CACHED_ACTIVITY, u64::MAX),
            clicks: StateCache::with_limits(CACHED_CLICKS, u64::MAX),
        }
    }
}

/// Why a command or a consumed event could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Partner(#[from] PartnerError),
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Conversion(#[from] ConversionError),
    /// A precondition outside any one aggregate (e.g. approving for an unregulated program).
    #[error("{0}")]
    Rule(String),
    #[error("stream {0} kept changing under the command")]
    Conflict(String),
    #[error("stored event is unreadable: {0}")]
    Decode(String),
    #[error(transparent)]
    Store(LogError),
}

impl From<std::convert::Infallible> for ServiceError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

pub(crate) fn lift<E: Into<ServiceError>>(e: ExecuteError<E>) -> ServiceError {
    match e {
        ExecuteError::Domain(e) => e.into(),
        ExecuteError::Conflict { stream, .. } => ServiceError::Conflict(stream),
        ExecuteError::Decode(d) => ServiceError::Decode(d),
        ExecuteError::Store(e) => ServiceError::Store(e),
    }
}

/// Compliance's application services over one store.
#[derive(Debug, Clone)]
pub struct Compliance {
    pub store: SharedStore,
    pub caches: Arc<Caches>,
    /// The sanctions list in use (loaded at start, replaced by [`Compliance::load_list`]);
    /// `None` when none is configured.
    pub sanctions: Arc<std::sync::RwLock<Option<Arc<SanctionsList>>>>,
}

/// The payout hold a missing required agreement of `kind` keeps in place.
pub fn requirement_hold(kind: VerificationKind) -> String {
    format!("{REQUIREMENT_HOLD_PREFIX}{}", kind.as_str())
}

/// Holds named so are placed and released by compliance's requirements, never by hand.
pub const REQUIREMENT_HOLD_PREFIX: &str = "requirement-";

/// Where each sanctions list version loaded after start is recorded (`SanctionsListLoaded`).
pub const SANCTIONS_LISTS_STREAM: &str = "sanctions-lists";

/// What loading a sanctions list did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListLoaded {
    pub sha256: String,
    pub entries: u64,
    /// False when the list was the one in use: nothing recorded, nobody screened.
    pub changed: bool,
    pub partners_screened: u64,
    /// Screenings that found a match still to be reviewed.
    pub matches_pending: u64,
}

#[derive(Debug, serde::Serialize)]
struct ListLoadedRecord<'a> {
    list_sha256: &'a str,
    list_entries: u64,
    loaded_by: &'a str,
    occurred_at: DateTime<Utc>,
}

/// A screening of `name` against `list`.
fn screen_with(
    list: &SanctionsList,
    partner_id: Uuid,
    screening_id: Uuid,
    name: &str,
    screened_by: &str,
    at: DateTime<Utc>,
) -> Screening {
    Screening {
        screening_id,
        partner_id,
        name: name.to_owned(),
        list_sha256: list.sha256().to_owned(),
        list_entries: u64::try_from(list.entries()).unwrap_or(u64::MAX),
        matches: list.screen(name),
        screened_by: screened_by.to_owned(),
        occurred_at: at,
    }
}

/// A command's meta for one step of handling a consumed event (or a request), so each step's
/// event ids are distinct and stable across redeliveries.
pub fn step(meta: &CommandMeta, purpose: &str) -> CommandMeta {
    CommandMeta {
        id_seed: Uuid::new_v5(&meta.id_seed, purpose.as_bytes()),
        ..meta.clone()
    }
}

impl Compliance {
    pub fn new(store: SharedStore, sanctions: Option<Arc<SanctionsList>>) -> Self {
        Self {
            store,
            caches: Arc::default(),
            sanctions: Arc::new(std::sync::RwLock::new(sanctions)),
        }
    }

    /// The sanctions list in use.
    pub fn list(&self) -> Option<Arc<SanctionsList>> {
        self.sanctions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `list` in use, unless it is the one in use already: records its version and
    /// checksum (`SanctionsListLoaded` in [`SANCTIONS_LISTS_STREAM`]) and screens every partner
    /// compliance knows by name against it. A match on entries the partner was cleared of as
    /// a false positive stays cleared (the screening's decider).
    pub async fn load_list(
        &self,
        list: SanctionsList,
        loaded_by: &str,
        at: DateTime<Utc>,
        meta: &CommandMeta,
    ) -> Result<ListLoaded, ServiceError> {
        let sha256 = list.sha256().to_owned();
        let entries = u64::try_from(list.entries()).unwrap_or(u64::MAX);
        if self.list().is_some_and(|l| l.sha256() == sha256) {
            return Ok(ListLoaded {
                sha256,
                entries,
                changed: false,
                partners_screened: 0,
                matches_pending: 0,
            });
        }
        // Every partner first, against the new list, then the record and the swap: a load
        // that fails part way leaves the old list in use and nothing recorded, and its retry
        // does it all again (each screening's id is derived from the request, so one already
        // made is not made twice).
        let mut screened = 0u64;
        let mut pending = 0u64;
        for (partner_id, name) in self.named_partners().await? {
            let id = Uuid::new_v5(&meta.id_seed, format!("screen/{partner_id}").as_bytes());
            let cmd = PartnerCommand {
                partner_id,
                at,
                action: Action::Screen(screen_with(&list, partner_id, id, &name, SYSTEM, at)),
            };
            let done = self
                .run(&cmd, &step(meta, &format!("screen/{partner_id}")))
                .await?;
            screened += 1;
            let awaits_review = done.events.iter().any(|e| {
                matches!(e, PartnerEvent::SanctionsStatusChanged(c)
                    if c.status == crate::partner::SanctionsState::MatchPendingReview)
            });
            pending += u64::from(awaits_review);
        }
        let record = ListLoadedRecord {
            list_sha256: &sha256,
            list_entries: entries,
            loaded_by,
            occurred_at: at,
        };
        let event = pl_eventlog::NewEvent::json(
            Uuid::new_v5(&meta.id_seed, b"sanctions-list-loaded"),
            "SanctionsListLoaded",
            1,
            &record,
            pl_eventlog::EventMetadata::at(at),
        )
        .map_err(ServiceError::Store)?;
        self.store
            .append(
                SANCTIONS_LISTS_STREAM,
                pl_eventlog::ExpectedVersion::Any,
                vec![event],
            )
            .await
            .map_err(ServiceError::Store)?;
        *self
            .sanctions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(list));
        tracing::info!(list_sha256 = %sha256, entries, screened, pending, "sanctions list loaded");
        Ok(ListLoaded {
            sha256,
            entries,
            changed: true,
            partners_screened: screened,
            matches_pending: pending,
        })
    }

    /// Every partner whose name compliance was told (partner CRM's applications), with the
    /// latest name, read from the partners' files in the log.
    async fn named_partners(&self) -> Result<Vec<(Uuid, String)>, ServiceError> {
        let mut names = std::collections::BTreeMap::new();
        let mut files = pl_eventlog::Subscription::new(
            self.store.clone(),
            0,
            pl_eventlog::SubscriptionFilter::StreamPrefix(streams::PARTNER_PREFIX.into()),
        );
        loop {
            let batch = files.poll_batch().await.map_err(ServiceError::Store)?;
            if batch.is_empty() {
                break;
            }
            for e in batch
                .iter()
                .filter(|e| e.event_type == "PartnerProfileRecorded")
            {
                let Ok(PartnerEvent::PartnerProfileRecorded(p)) =
                    pl_runtime::aggregate::decode_event::<PartnerEvent>(e)
                else {
                    continue;
                };
                if let Some(name) = p.profile.display_name {
                    names.insert(p.partner_id, name);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The program's settings in force (the defaults when never configured) and their version.
    pub async fn program(&self, program_id: Uuid) -> Result<(Settings, u64), ServiceError> {
        let (view, _) = self
            .caches
            .programs
            .read(self.store.as_ref(), &streams::program(program_id), |p| {
                (p.settings.clone(), p.version)
            })
            .await
            .map_err(lift)?;
        Ok(view)
    }

    pub async fn configure_program(
        &self,
        c: &crate::program::Configured,
        meta: &CommandMeta,
    ) -> Result<(Settings, u64), ServiceError> {
        let done = execute::<Program>(
            self.store.as_ref(),
            &streams::program(c.program_id),
            c,
            meta,
        )
        .await
        .map_err(lift)?;
        Ok((done.state.settings, done.state.version))
    }

    /// A view of the partner's file as of its last event.
    pub async fn partner<R>(
        &self,
        partner_id: Uuid,
        view: impl FnOnce(&PartnerFile) -> R,
    ) -> Result<(R, Option<u64>), ServiceError> {
        self.caches
            .partners
            .read(self.store.as_ref(), &streams::partner(partner_id), view)
            .await
            .map_err(lift)
    }

    /// Runs a requested command on the partner's file. Uncached on purpose: a retried request
    /// finds its own events by id while the stream is replayed, whatever the cache holds.
    pub async fn run(
        &self,
        cmd: &PartnerCommand,
        meta: &CommandMeta,
    ) -> Result<Executed<PartnerFile, PartnerEvent>, ServiceError> {
        execute::<PartnerFile>(
            self.store.as_ref(),
            &streams::partner(cmd.partner_id),
            cmd,
            meta,
        )
        .await
        .map_err(lift)
    }

    /// Runs a command whose decider is idempotent by its own keys (consumed events' ids, flag
    /// ids, screening ids) through the cache.
    async fn run_cached(
        &self,
        cmd: &PartnerCommand,
        meta: &CommandMeta,
    ) -> Result<(), ServiceError> {
        self.caches
            .partners
            .execute(
                self.store.as_ref(),
                &streams::partner(cmd.partner_id),
                cmd,
                meta,
                |_| (),
            )
            .await
            .map_err(lift)?;
        Ok(())
    }

    /// Holds the partner's payouts (`requirement-<kind>`) while an agreement its program
    /// requires is not recorded as verified at `at`, and releases the hold once it is. Run
    /// after whatever may change the answer: the partner's application (its program), and a
    /// verification recorded.
    pub async fn enforce_requirements(
        &self,
        partner_id: Uuid,
        at: DateTime<Utc>,
        meta: &CommandMeta,
    ) -> Result<(), ServiceError> {
        let ((program, missing_and_open), _) = self
            .partner(partner_id, |f| {
                let program = f.profile.as_ref().and_then(|p| p.program_id);
                let state = |kind: VerificationKind| {
                    let recorded = f.standing.holds_valid(kind, at);
                    let held = f
                        .standing
                        .holds
                        .get(&requirement_hold(kind))
                        .is_some_and(|h| h.in_place);
                    (kind, !recorded, held)
                };
                (
                    program,
                    crate::program::REQUIRABLE
                        .iter()
                        .map(|k| state(*k))
                        .collect::<Vec<_>>(),
                )
            })
            .await?;
        let Some(program) = program else {
            return Ok(());
        };
        let (settings, _) = self.program(program).await?;
        for (kind, missing, held) in missing_and_open {
            let required = settings.required_verifications.contains(&kind);
            let action = match (required && missing, held) {
                (true, false) => Action::PlaceHold {
                    hold_id: requirement_hold(kind),
                    reason: format!(
                        "program {program} requires a {} before payouts",
                        kind.as_str()
                    ),
                    by: SYSTEM.to_owned(),
                },
                (false, true) => Action::ReleaseHold {
                    hold_id: requirement_hold(kind),
                    reason: format!("{} recorded, or no longer required", kind.as_str()),
                    by: SYSTEM.to_owned(),
                },
                _ => continue,
            };
            let cmd = PartnerCommand {
                partner_id,
                at,
                action,
            };
            self.run(&cmd, &step(meta, &requirement_hold(kind))).await?;
        }
        Ok(())
    }

    /// Screens `name` and records the screening (with id `screening_id`) in the partner's file.
    pub fn screening(
        &self,
        partner_id: Uuid,
        screening_id: Uuid,
        name: &str,
        screened_by: &str,
        at: DateTime<Utc>,
    ) -> Option<Screening> {
        let list = self.list()?;
        Some(screen_with(
            &list,
            partner_id,
            screening_id,
            name,
            screened_by,
            at,
        ))
    }

    // ----- consumed events --------------------------------------------------------------------

    // Attribution's events are screened a run at a time: `screening`.

    /// Every conversion rule that fires for partner `p`'s credit.
    pub(crate) async fn conversion_findings(
        &self,
        c: &ConversionAttributed,
        p: Uuid,
        settings: &Settings,
    ) -> Result<Vec<Finding>, ServiceError> {
        let rules = &settings.rules;
        let mine: Vec<_> = c.touchpoints.iter().filter(|t| t.partner_id == p).collect();
        let clicks: Vec<_> = mine.iter().filter(|t| t.kind == "click").collect();
        let ((profile, licensed), _) = self
            .partner(p, |f| {
                (f.profile.clone(), f.standing.licensed(c.occurred_at))
            })
            .await?;
        let profile = profile.unwrap_or_default();
        let mut out = Vec::new();
        if rules.self_referral.enabled {
            let partner = PartnerIdentity {
                email_sha256: profile.email_sha256.as_deref(),
                email_domain: profile.email_domain.as_deref(),
                ip_hashes: profile.signup_ip_hash.as_deref().into_iter().collect(),
            };
            let ids: Vec<String> = mine.iter().map(|t| t.touchpoint_id.to_string()).collect();
            let customer = CustomerIdentity {
                email_sha256: c.customer_email_hash.as_deref(),
                domain: c.customer_domain.as_deref(),
                ip_hashes: mine
                    .iter()
                    .zip(&ids)
                    .filter_map(|(t, id)| t.ip_hash.as_deref().map(|ip| (id.as_str(), ip)))
                    .collect(),
            };
            out.extend(rules::self_referral(
                &partner,
                &customer,
                &rules.ignored_email_domains,
            ));
        }
        if rules.click_to_conversion.enabled {
            let times: Vec<(String, DateTime<Utc>)> = clicks
                .iter()
                .map(|t| (t.touchpoint_id.to_string(), t.occurred_at))
                .collect();
            out.extend(rules::click_to_conversion(
                &times,
                c.occurred_at,
                rules.min_click_to_conversion_seconds,
            ));
        }
        if rules.click_velocity.enabled {
            for t in &clicks {
                let Some(ip) = t.ip_hash.as_deref() else {
                    continue;
                };
                let (velocity, _) = self
                    .caches
                    .clicks
                    .read(
                        self.store.as_ref(),
                        &streams::clicks(c.program_id, ip),
                        |s| s.velocity(t.touchpoint_id),
                    )
                    .await
                    .map_err(lift)?;
                if let Some(v) = velocity {
                    out.extend(rules::click_velocity(
                        &t.touchpoint_id.to_string(),
                        ip,
                        v.clicks_in_window,
                        v.max_clicks,
                        v.window_seconds,
                    ));
                    break;
                }
            }
        }
        if rules.unlicensed_jurisdiction.enabled && settings.regulated {
            out.extend(rules::unlicensed_jurisdiction(
                c.customer_country.as_deref(),
                &licensed,
                &settings.jurisdictions,
            ));
        }
        Ok(out)
    }

    /// A partner applied: keep what the rules need, look for duplicate accounts, and screen
    /// the name when a sanctions list is loaded.
    pub async fn on_partner_applied(
        &self,
        source_event_id: Uuid,
        a: &PartnerApplied,
        at: DateTime<Utc>,
        meta: &CommandMeta,
    ) -> Result<(), ServiceError> {
        let profile = Profile {
            program_id: Some(a.program_id),
            partner_type: a.partner_type.clone(),
            display_name: a.display_name.clone(),
            email_sha256: a.email_sha256.clone(),
            email_domain: a.email_domain.clone(),
            country: a.country.clone(),
            signup_ip_hash: a.signup_ip_hash.clone(),
        };
        let note = PartnerCommand {
            partner_id: a.partner_id,
            at,
            action: Action::NoteProfile {
                source_event_id,
                profile,
            },
        };
        self.run_cached(&note, &step(meta, "profile")).await?;

        let (settings, version) = self.program(a.program_id).await?;
        let rules = &settings.rules;
        let mut drafts = Vec::new();
        if rules.duplicate_accounts.enabled {
            for (kind, value) in [("email", &a.email_sha256), ("ip", &a.signup_ip_hash)] {
                let Some(value) = value else { continue };
                let done = execute::<Identity>(
                    self.store.as_ref(),
                    &streams::identity(a.program_id, kind, value),
                    &Claim {
                        partner_id: a.partner_id,
                        kind: kind.to_owned(),
                        at,
                    },
                    &step(meta, &format!("identity:{kind}")),
                )
                .await
                .map_err(lift)?;
                let partners = &done.state.partners;
                let index = partners
                    .iter()
                    .position(|p| *p == a.partner_id)
                    .unwrap_or(partners.len());
                let others: Vec<String> = partners
                    .iter()
                    .take(index.min(crate::signals::MAX_OTHERS_NAMED))
                    .map(Uuid::to_string)
                    .collect();
                let accounts = u32::try_from(index + 1).unwrap_or(u32::MAX);
                if let Some(mut f) = rules::duplicate_accounts(
                    kind,
                    accounts,
                    rules.max_accounts_per_identifier,
                    &others,
                ) {
                    f.evidence
                        .insert("settings_version".into(), version.to_string());
                    drafts.push(FlagDraft {
                        flag_id: streams::flag_id(
                            Rule::DuplicateAccounts.as_str(),
                            a.partner_id,
                            kind,
                        ),
                        conversion_id: None,
                        program_id: a.program_id,
                        outcome: rules.duplicate_accounts.outcome,
                        finding: f,
                    });
                }
            }
        }
        if !drafts.is_empty() {
            let cmd = PartnerCommand {
                partner_id: a.partner_id,
                at,
                action: Action::Raise(drafts),
            };
            self.run_cached(&cmd, &step(meta, "flags")).await?;
        }
        if let Some(name) = &a.display_name {
            let id = streams::screening_id(source_event_id);
            if let Some(s) = self.screening(a.partner_id, id, name, SYSTEM, at) {
                let cmd = PartnerCommand {
                    partner_id: a.partner_id,
                    at,
                    action: Action::Screen(s),
                };
                self.run_cached(&cmd, &step(meta, "screen")).await?;
            }
        }
        self.enforce_requirements(a.partner_id, at, &step(meta, "requirements"))
            .await?;
        Ok(())
    }

    pub async fn on_status(
        &self,
        source_event_id: Uuid,
        partner_id: Uuid,
        status: &str,
        reason: &str,
        at: DateTime<Utc>,
        meta: &CommandMeta,
    ) -> Result<(), ServiceError> {
        let cmd = PartnerCommand {
            partner_id,
            at,
            action: Action::NoteStatus {
                source_event_id,
                status: status.to_owned(),
                reason: reason.to_owned(),
            },
        };
        self.run_cached(&cmd, &step(meta, "status")).await
    }
}
