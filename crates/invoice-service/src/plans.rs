//! Account plans and charges: the gallery's cache divergence (the seed's "instances").
//!
//! `POST /plans` changes an account's price; `POST /charges` bills the account at its price.
//! `naive` keeps each account's plan in a per-process cache, filled on first use and updated
//! only by a plan change this process served: a replica that did not serve the change keeps
//! billing at the old price. `fixed` reads the plan's version from the database on every charge
//! and uses the cached price only when the versions agree (versioned keys), so a change through
//! any replica is seen by all. Nothing here simulates staleness; it happens or it does not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;

use crate::App;
use crate::config::Variant;
use crate::db::on_pool;
use crate::error::RequestError;
use crate::log::{OpContext, now_ms, traced};

/// The price of an account that never changed its plan, and its version.
pub const DEFAULT_PRICE_CENTS: i64 = 1_000;

/// Highest price a plan may set.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;

/// A plan as a process remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Price per charge.
    pub price_cents: i64,
    /// Bumped by every change (0: never changed).
    pub version: i64,
}

/// This process's plan cache.
#[derive(Debug, Default)]
pub struct PlanCache(Mutex<HashMap<String, Plan>>);

impl PlanCache {
    fn get(&self, account_id: &str) -> Option<Plan> {
        self.0.lock().ok()?.get(account_id).copied()
    }

    fn put(&self, account_id: &str, plan: Plan) {
        if let Ok(mut cache) = self.0.lock() {
            cache.insert(account_id.to_string(), plan);
        }
    }
}

/// Changes `account_id`'s price; the plan after.
pub async fn change(
    app: &App,
    ctx: &mut OpContext,
    account_id: &str,
    price_cents: i64,
) -> Result<Plan, RequestError> {
    let started = Instant::now();
    let upsert = "INSERT INTO plans (account_id, price_cents, version, changed_at_ms) \
                  VALUES ($1, $2, 1, $3) \
                  ON CONFLICT (account_id) DO UPDATE SET price_cents = excluded.price_cents, \
                  version = plans.version + 1, changed_at_ms = excluded.changed_at_ms \
                  RETURNING version";
    let version: i64 = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        sqlx::query_scalar(&traced(upsert, ctx)).persistent(false)
            .bind(account_id)
            .bind(price_cents)
            .bind(now_ms())
            .fetch_one(&mut *conn)
            .await?
    });
    let plan = Plan {
        price_cents,
        version,
    };
    app.plans.put(account_id, plan);
    app.log.decision(
        ctx,
        "plan.changed",
        json!({"price_cents": price_cents, "plan_version": version}),
    );
    Ok(plan)
}

/// The plan in the database (the default when it never changed).
async fn stored(app: &App, ctx: &mut OpContext, account_id: &str) -> Result<Plan, RequestError> {
    let started = Instant::now();
    let read = "SELECT price_cents, version FROM plans WHERE account_id = $1";
    let row: Option<(i64, i64)> = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        ctx.db_wait_ms += started.elapsed().as_secs_f64() * 1e3;
        sqlx::query_as(&traced(read, ctx)).persistent(false)
            .bind(account_id)
            .fetch_optional(&mut *conn)
            .await?
    });
    Ok(row.map_or(
        Plan {
            price_cents: DEFAULT_PRICE_CENTS,
            version: 0,
        },
        |(price_cents, version)| Plan {
            price_cents,
            version,
        },
    ))
}

/// The version alone, for `fixed`'s check of its cached price.
async fn stored_version(
    app: &App,
    ctx: &mut OpContext,
    account_id: &str,
) -> Result<i64, RequestError> {
    let read = "SELECT version FROM plans WHERE account_id = $1";
    let version: Option<i64> = on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        sqlx::query_scalar(&traced(read, ctx)).persistent(false)
            .bind(account_id)
            .fetch_optional(&mut *conn)
            .await?
    });
    Ok(version.unwrap_or(0))
}

/// Bills `account_id` once at its price; the plan it was billed at.
pub async fn charge(
    app: &App,
    ctx: &mut OpContext,
    account_id: &str,
) -> Result<Plan, RequestError> {
    // Naive trusts its cache; fixed only while the database's version agrees.
    let cached = match (app.config.variant, app.plans.get(account_id)) {
        (Variant::Naive, Some(plan)) => Some(plan),
        (Variant::Fixed, Some(plan))
            if stored_version(app, ctx, account_id).await? == plan.version =>
        {
            Some(plan)
        }
        _ => None,
    };
    let plan = match cached {
        Some(plan) => {
            app.log.decision(
                ctx,
                "plan.cached",
                json!({"price_cents": plan.price_cents, "plan_version": plan.version}),
            );
            plan
        }
        None => {
            let plan = stored(app, ctx, account_id).await?;
            app.plans.put(account_id, plan);
            app.log.decision(
                ctx,
                "plan.read",
                json!({"price_cents": plan.price_cents, "plan_version": plan.version}),
            );
            plan
        }
    };
    let insert = "INSERT INTO charges (account_id, price_cents, plan_version, created_at_ms, served_by) \
                  VALUES ($1, $2, $3, $4, $5)";
    on_pool!(&app.db, pool => {
        let mut conn = pool.acquire().await?;
        sqlx::query(&traced(insert, ctx)).persistent(false)
            .bind(account_id)
            .bind(plan.price_cents)
            .bind(plan.version)
            .bind(now_ms())
            .bind(&app.config.version)
            .execute(&mut *conn)
            .await
            .map(|_| ())?
    });
    app.log.decision(
        ctx,
        "charge.billed",
        json!({"price_cents": plan.price_cents, "plan_version": plan.version}),
    );
    Ok(plan)
}
