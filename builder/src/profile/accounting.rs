//! `[accounting]`: process accounting (acct) and how long its records are
//! kept. Validated where written, merged field by field, defaults applied. Pure.

use super::raw::RawAccounting;
use crate::located::{LocatedError, SourceText};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountingSpec {
    pub processes: bool,
    pub days_kept: u32,
}

#[derive(Debug, Default)]
pub struct AccountingLayer {
    processes: Option<bool>,
    days_kept: Option<u32>,
}

pub fn validate(source: &SourceText, raw: Option<RawAccounting>) -> Result<AccountingLayer, LocatedError> {
    let Some(raw) = raw else { return Ok(AccountingLayer::default()) };
    let mut layer = AccountingLayer { processes: raw.processes, days_kept: None };
    if let Some(days) = &raw.days_kept {
        layer.days_kept = Some(source.check(days, "accounting.days-kept", |n: &i64| u32::try_from(*n).ok().filter(|n| (1..=3650).contains(n)).ok_or("days from 1 to 3650"))?);
    }
    Ok(layer)
}

pub fn merge(base: &mut AccountingLayer, child: AccountingLayer) {
    super::take(&mut base.processes, child.processes);
    super::take(&mut base.days_kept, child.days_kept);
}

pub fn finish(layer: AccountingLayer) -> AccountingSpec {
    AccountingSpec { processes: layer.processes.unwrap_or(true), days_kept: layer.days_kept.unwrap_or(30) }
}
