"""The broker's database: migration records, replay store, receipts."""
