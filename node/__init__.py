"""On-premise side: ingestion, pseudonyms, store, privacy ledger, scoring, Flower ClientApp."""
