//! Store keys that more than one service reads. The service that writes a key owns its
//! meaning; this module only fixes where it lives, so that readers cannot drift.

use foundationdb_tuple::pack;

/// The prefix of every worker record of a component: `("worker", tenant, component, worker)`.
/// The executor writes them; the registry reads them to refuse deleting a component in use.
pub fn workers_prefix(tenant: &str, component: &str) -> Vec<u8> {
    pack(&("worker", tenant, component))
}
