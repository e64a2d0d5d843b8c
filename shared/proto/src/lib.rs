//! The gRPC wire types and service stubs, generated from `proto/` by `tonic-prost-build` with a
//! vendored `protoc`.
//!
//! **Boundary:** only each service's `grpc` module uses these types; domain crates convert at
//! that edge and never derive prost themselves.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The generated modules nest as the proto packages do (`invicta.registry.v1`), which is what
/// the generated cross-package paths expect.
pub mod invicta {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("invicta.common.v1");
        }
    }
    pub mod registry {
        pub mod v1 {
            tonic::include_proto!("invicta.registry.v1");
        }
    }
    pub mod scheduler {
        pub mod v1 {
            tonic::include_proto!("invicta.scheduler.v1");
        }
    }
    pub mod executor {
        pub mod v1 {
            tonic::include_proto!("invicta.executor.v1");
        }
    }
    pub mod billing {
        pub mod v1 {
            tonic::include_proto!("invicta.billing.v1");
        }
    }
}

pub use invicta::billing::v1 as billing;
pub use invicta::common::v1 as common;
pub use invicta::executor::v1 as executor;
pub use invicta::registry::v1 as registry;
pub use invicta::scheduler::v1 as scheduler;
