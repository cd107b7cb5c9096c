//! Authorization: an HTTP request and its verified claims become a Cedar request, decided by
//! the policies of the set the request selects.
//!
//! - [`authorizer`]: HTTP request + claims → Cedar principal, action, resource and context →
//!   decision.
//! - [`action_routes`]: the route table mapping method and path to a Cedar action and resource.
//! - [`tenants`]: the default policy set and one per tenant, dry run and shadow evaluation.
//! - [`index`]: the scope index that evaluates only the policies a request can match.
//! - [`entity_slice`]: the entities one decision can read.
//! - [`policy_reads`]: what a bundle's policies read, from their syntax trees.

pub mod action_routes;
pub mod authorizer;
pub mod entity_slice;
pub mod index;
pub mod policy_reads;
pub mod tenants;
