//! Invicta's domain model, shared by every service and free of IO: the ids that name tenants,
//! components and workers ([`ids`]), the values that cross a worker's boundary ([`Value`]), and
//! the oplog ([`oplog`]): its entries and their compact, versioned binary encoding.

pub mod ids;
pub mod layout;
pub mod oplog;
pub mod retry;
pub mod shards;
pub mod usage;
mod value;

pub use ids::{ComponentName, RouteName, TenantId, WorkerId, WorkerName};
pub use value::Value;

pub use usage::month_of;
