//! Demo data for development and benchmarks: N users plus one admin. Idempotent: rows are
//! keyed by mobile and inserted only when absent, so a second run changes nothing.

use kit::db::Db;

use crate::{
    domain::{self, Gender, NewUser, Result, Role},
    repo,
};

/// The password every demo user gets (the admin's is given on the command line).
pub const DEMO_PASSWORD: &str = "demo-password";

#[derive(Debug, Clone)]
pub struct SeedRequest {
    pub users: u32,
    pub admin_mobile: String,
    pub admin_password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    pub inserted: u32,
    pub already_present: u32,
}

/// Demo mobile `i` (1-based): 138 followed by `i` on 8 digits.
pub fn demo_mobile(i: u32) -> String {
    format!("138{i:08}")
}

pub async fn seed(db: &Db, request: &SeedRequest) -> Result<SeedReport> {
    domain::validate_mobile(&request.admin_mobile)?;
    domain::validate_password(&request.admin_password)?;
    if request.users > 99_999_999 {
        return Err(domain::Error::InvalidArgument {
            field: "users",
            message: "at most 99999999 demo users".into(),
        });
    }
    let store = repo::store(db);
    let existing = store.mobiles().await?;
    let mut report = SeedReport {
        inserted: 0,
        already_present: 0,
    };
    let mut count = |added: bool| {
        if added {
            report.inserted += 1;
        } else {
            report.already_present += 1;
        }
    };
    let admin = NewUser {
        mobile: request.admin_mobile.clone(),
        password_hash: domain::hash_password(&request.admin_password).await?,
        nick_name: "admin".into(),
        role: Role::Admin,
        gender: Gender::Male,
        birthday: None,
    };
    count(!existing.contains(&admin.mobile) && store.insert_if_absent(&admin).await?);
    // One hash for all demo users: hashing is deliberately slow, and demo rows need no
    // per-user salt.
    let demo_hash = domain::hash_password(DEMO_PASSWORD).await?;
    for i in 1..=request.users {
        let mobile = demo_mobile(i);
        if existing.contains(&mobile) {
            count(false);
            continue;
        }
        let user = NewUser {
            mobile,
            password_hash: demo_hash.clone(),
            nick_name: format!("user{i}"),
            role: Role::User,
            gender: if i % 2 == 0 {
                Gender::Female
            } else {
                Gender::Male
            },
            // 1990-01-01 plus a few weeks per user: varied, reproducible birthdays.
            birthday: Some(631_152_000 + i64::from(i % 3650) * 86_400 * 3),
        };
        count(store.insert_if_absent(&user).await?);
    }
    Ok(report)
}
