"""The migration API's answers (October and August 2025 shapes), with their ids and token."""

TOKEN = "s3cr3t-token-value-0123456789"
CDN = "https://cdn.example.test"
UID = "0123456789abcdef0123456789abcdef"
OPENVINE_ID = "1751085897568-0fd41442"
VINE_ID = "bqJ5A2xW6Ke"
OCT_2025 = {
  "status": "hybrid_migration_completed",
  "uid": UID,
  "sha256": "ab" * 32,
  "mp4Url": f"https://cdn.divine.video/{UID}/downloads/default.mp4",
  "thumbnailUrl": f"https://cdn.divine.video/{UID}/thumbnails/thumbnail.jpg",
  "posterUrl": f"https://cdn.divine.video/{UID}/poster.jpg",
  "animatedThumbnailUrl": f"https://cdn.divine.video/{UID}/thumbnails/thumbnail.gif",
  "blossomUrl": "https://blossom.example/abc",
}
AUG_2025 = {
  "status": "migrated",
  "uid": UID,
  "hlsUrl": f"https://stream.example/{UID}/manifest/video.m3u8",
  "dashUrl": f"https://stream.example/{UID}/manifest/video.mpd",
  "mp4Url": f"https://stream.example/{UID}/downloads/default.mp4",
  "thumbnailUrl": f"https://stream.example/{UID}/thumbnails/thumbnail.jpg",
  "animatedThumbnailUrl": f"https://stream.example/{UID}/thumbnails/thumbnail.gif",
  "downloadStatus": "ready",
}
ALREADY = {"status": "already_migrated", "uid": UID}
