//! The Kafka server.
