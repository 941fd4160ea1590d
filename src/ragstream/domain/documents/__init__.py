"""The knowledge base: intake, ingestion pipeline, durable jobs and document events."""
