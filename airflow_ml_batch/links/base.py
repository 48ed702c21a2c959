"""What the package's console links share: on Airflow 3 a worker run renders them from what it knows."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow_ml_batch._compat import AIRFLOW_V_3_0_PLUS, Context

#: operator attribute holding, by link key, the data of the links a worker run saved (:meth:`KeptLink.save`)
_KEPT = "_kept_link_data"


class KeptLink:
    """Mixin over the Amazon provider's ``BaseAwsLink``: the link's data stays on the operator where it can.

    Airflow 3 renders every link of a task when a worker run ends (the run that defers included) and
    shows only that URL, which it keeps in the XCom ``_link_<name>``. :meth:`save` keeps the link's data
    on the operator for that rendering, instead of ``persist``-ing it as an XCom that the rendering reads
    back: two Execution API calls fewer per task run. Airflow 2 renders links in the webserver, from the
    XCom, so there :meth:`save` persists it.
    """

    key: ClassVar[str]
    #: the operator attribute that says this link's data is not known yet (no job, no log stream): no URL
    pending_flag: ClassVar[str | None] = None

    @classmethod
    def save(cls, context: Context, operator: Any, region_name: str, aws_partition: str, **kwargs: Any) -> None:
        """Save the link's data (``persist``'s arguments) for this run's rendering, or as an XCom on Airflow 2."""
        if not AIRFLOW_V_3_0_PLUS:
            cls.persist(  # type: ignore[attr-defined]
                context=context, operator=operator, region_name=region_name, aws_partition=aws_partition, **kwargs
            )
            return
        if not operator.do_xcom_push:  # as persist: no XCom, no link
            return
        data = {"region_name": region_name, "aws_domain": cls.get_aws_domain(aws_partition), **kwargs}  # type: ignore[attr-defined]
        operator.__dict__.setdefault(_KEPT, {})[cls.key] = data

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if self.pending_flag and getattr(operator, self.pending_flag, False):
            return ""
        kept = getattr(operator, _KEPT, {}).get(self.key)
        if kept is not None:
            return str(self.format_link(**kept))  # type: ignore[attr-defined]
        return str(super().get_link(operator, ti_key=ti_key))  # type: ignore[misc]
