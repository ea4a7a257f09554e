"""The merchant side: orders over HTTP (QR orders the customer scans, codes presented over HTTP),
the channels' payment notifications, and the notifications to merchants (an outbox)."""
