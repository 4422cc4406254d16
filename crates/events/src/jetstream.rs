//! The NATS JetStream backend (being built).
