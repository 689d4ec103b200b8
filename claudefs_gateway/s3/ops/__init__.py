"""
The S3 operations, by family: L{buckets} (buckets and listing), L{objects}
(objects and copies), L{multipart} (multipart uploads), over what every one
of them shares (L{base}). L{claudefs_gateway.s3.api.S3Api} is all of them.
"""
