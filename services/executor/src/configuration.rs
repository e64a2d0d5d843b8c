//! Configuration and secrets over the API: what `settings.rs` stores, set, listed and removed
//! for a component or one of its workers, in this tenant's name.

use invicta_model::{ComponentName, TenantId, WorkerName};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use invicta_model::retry::RetryPolicy;

use crate::Executor;
use crate::error::{Error, Result};
use crate::settings::{self, ConfigEntry};

impl Executor {
    /// Sets `key` of the component (or of one of its workers) to `value`, sealed when
    /// `secret`. The component must exist.
    pub async fn set_config(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
        worker: Option<&WorkerName>,
        key: &str,
        value: &str,
        secret: bool,
    ) -> Result<ConfigEntry> {
        self.inner.registry.get(tenant, component, None).await?;
        let scope = settings::Scope {
            tenant,
            component,
            worker,
        };
        settings::set(
            &self.inner.store,
            &self.inner.secrets,
            &scope,
            key,
            value,
            secret,
        )
        .await
    }

    /// Removes `key`; whether it was set.
    pub async fn unset_config(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
        worker: Option<&WorkerName>,
        key: &str,
    ) -> Result<bool> {
        let scope = settings::Scope {
            tenant,
            component,
            worker,
        };
        settings::unset(&self.inner.store, &scope, key).await
    }

    /// The entries set on the component (or on one of its workers), secrets without values.
    pub async fn list_config(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
        worker: Option<&WorkerName>,
    ) -> Result<Vec<ConfigEntry>> {
        self.inner.registry.get(tenant, component, None).await?;
        let scope = settings::Scope {
            tenant,
            component,
            worker,
        };
        settings::list(&self.inner.store, &scope).await
    }

    /// Sets the retry policy of the component's background invocations that name none (over
    /// the plan's); `None` removes it. The component must exist.
    pub async fn set_component_retry(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
        policy: Option<RetryPolicy>,
    ) -> Result<()> {
        self.inner.registry.get(tenant, component, None).await?;
        if let Some(policy) = &policy {
            policy
                .check()
                .map_err(|reason| Error::InvalidRequest(format!("retry: {reason}")))?;
        }
        let key = retry_key(tenant, component);
        let bytes = policy.as_ref().map(crate::records::encode_json);
        self.inner
            .store
            .transact(move |tx| {
                match &bytes {
                    Some(bytes) => tx.set(&key, bytes)?,
                    None => tx.clear(&key)?,
                }
                Ok::<_, Error>(())
            })
            .await?;
        self.inner.retries.forget(tenant, component);
        Ok(())
    }

    /// The component's retry policy, if it has one (as read at most [`RETRY_STALE`] ago: a
    /// change made through another process applies within it).
    pub async fn component_retry(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
    ) -> Result<Option<RetryPolicy>> {
        if let Some(known) = self.inner.retries.known(tenant, component) {
            return Ok(known);
        }
        let key = retry_key(tenant, component);
        let bytes = self.inner.store.read(move |tx| tx.get(&key)).await?;
        let policy: Option<RetryPolicy> = bytes
            .map(|b| crate::records::decode_json("retry policy", &b))
            .transpose()?;
        self.inner
            .retries
            .remember(tenant, component, policy.clone());
        Ok(policy)
    }
}

impl Executor {
    /// Sets when the component's workers are snapshotted (over the executor's default); `None`
    /// removes it. The component must exist. A worker uses it from its next activation, or
    /// after its next snapshot.
    pub async fn set_component_snapshots(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
        policy: Option<crate::snapshots::Policy>,
    ) -> Result<()> {
        self.inner.registry.get(tenant, component, None).await?;
        if let Some(policy) = &policy {
            policy
                .check()
                .map_err(|reason| Error::InvalidRequest(format!("snapshots: {reason}")))?;
        }
        let key = crate::snapshots::policy_key(tenant.as_str(), component.as_str());
        let bytes = policy.as_ref().map(crate::records::encode_json);
        self.inner
            .store
            .transact(move |tx| {
                match &bytes {
                    Some(bytes) => tx.set(&key, bytes)?,
                    None => tx.clear(&key)?,
                }
                Ok::<_, Error>(())
            })
            .await
    }

    /// The component's own snapshot policy, if it has one.
    pub async fn component_snapshots(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
    ) -> Result<Option<crate::snapshots::Policy>> {
        self.inner.registry.get(tenant, component, None).await?;
        let key = crate::snapshots::policy_key(tenant.as_str(), component.as_str());
        let bytes = self.inner.store.read(move |tx| tx.get(&key)).await?;
        bytes
            .map(|b| crate::records::decode_json("snapshot policy", &b))
            .transpose()
    }

    /// Removes what the component was given over the API (configuration, secrets, retry
    /// policy), once it is deleted.
    pub async fn forget_component(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
    ) -> Result<()> {
        let (config, retry, snapshots) = (
            settings::component_prefix(tenant, component),
            retry_key(tenant, component),
            crate::snapshots::policy_key(tenant.as_str(), component.as_str()),
        );
        self.inner
            .store
            .transact(move |tx| {
                let (begin, end) = invicta_store::keys::prefix_range(&config);
                tx.clear_range(&begin, &end)?;
                tx.clear(&retry)?;
                tx.clear(&snapshots)?;
                Ok::<_, Error>(())
            })
            .await?;
        self.inner.retries.forget(tenant, component);
        Ok(())
    }
}

/// How long a component's retry policy is used as read before it is read again.
pub const RETRY_STALE: Duration = Duration::from_secs(1);

/// Components' retry policies as last read: an enqueue need not read the store for one.
#[derive(Default)]
pub(crate) struct Retries {
    known: Mutex<HashMap<(TenantId, ComponentName), Read>>,
}

/// A policy (or none) and when it was read.
type Read = (Instant, Option<RetryPolicy>);

impl Retries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, ComponentName), Read>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self, tenant: &TenantId, component: &ComponentName) -> Option<Option<RetryPolicy>> {
        self.lock()
            .get(&(tenant.clone(), component.clone()))
            .filter(|(at, _)| at.elapsed() < RETRY_STALE)
            .map(|(_, policy)| policy.clone())
    }

    fn remember(&self, tenant: &TenantId, component: &ComponentName, policy: Option<RetryPolicy>) {
        let mut known = self.lock();
        if known.len() > 10_000 {
            known.clear();
        }
        known.insert(
            (tenant.clone(), component.clone()),
            (Instant::now(), policy),
        );
    }

    fn forget(&self, tenant: &TenantId, component: &ComponentName) {
        self.lock().remove(&(tenant.clone(), component.clone()));
    }
}

fn retry_key(tenant: &TenantId, component: &ComponentName) -> Vec<u8> {
    invicta_store::keys::pack(&("component-retry", tenant.as_str(), component.as_str()))
}
