"""The operator console: the federation's sites, studies, runs and signed reports in a browser.

Served by the coordinator (``rehealth coordinator console --federation-dir KITS``), behind a
login (:mod:`.users`, :mod:`.auth`); what it shows comes from the coordinator's kit, the
SuperLink's Control API, the runs' event logs and the signed reports (:mod:`.federation`).
"""
