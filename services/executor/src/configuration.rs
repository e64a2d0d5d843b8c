//! Configuration and secrets over the API: what `settings.rs` stores, set, listed and removed
//! for a component or one of its workers, in this tenant's name.

use invicta_model::{ComponentName, TenantId, WorkerName};

use crate::Executor;
use crate::error::Result;
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
}
