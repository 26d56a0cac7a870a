"""Web pages the node serves: the HR view (:mod:`node.web.hr`, ``/hr/``) and the report page
(``/report``, :mod:`shared.web.report_page`)."""
