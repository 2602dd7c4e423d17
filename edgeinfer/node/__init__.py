"""The DICOM node behind ``edgeinfer serve``: C-STORE in, spool, state, triage, SR back to PACS."""
