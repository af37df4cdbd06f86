"""Query/Retrieve C-FIND SCP (Patient Root and Study Root) on the store port.

A query's path::

    C-FIND identifier -> qr_access.qr_allowed()       (else 0xC124)
                      -> qr_find.parse_identifier()    (level, hierarchy, charset;
                                                        else 0xA900 / 0xC000)
                      -> IndexReader.query(level, filters)   (the index seam, the
                                                        worklist's matching engine)
                      -> qr_find.response_tree() / encode_response()
                      -> Pending 0xFF00 ... then Success (or Cancel 0xFE00)

STUDY and PATIENT level read the catalog (one summary per study, cached
while the index's version token stays the same); SERIES and IMAGE level read
only the study their StudyInstanceUID names (the hierarchy requires it), so
no query reads every study file.  One INFO line per query: calling AE, model,
level, how many keys and which were matched on (names, never values), the
matches and the seconds.
"""

from __future__ import annotations

import logging
import struct
import time

from echoes.config import Config
from echoes.dicom import acceptor as association
from echoes.dicom import dataset, dimse, part10, pdu, syntax
from echoes.dicom.dimse import CANCEL, CANNOT_UNDERSTAND, SUCCESS, UNABLE_TO_PROCESS
from echoes.index import IndexReader, open_index
from echoes.index.cache import CachingReader
from echoes.services import qr_access, qr_find
from echoes.services.find import CANCEL_CHECK_EVERY, MAX_IDENTIFIER, FindRequest, PendingWriter

log = logging.getLogger("echoes.qr")

#: The FIND SOP classes this service answers, on the three uncompressed syntaxes.
FIND_CLASSES = (qr_find.PATIENT_ROOT_FIND, qr_find.STUDY_ROOT_FIND)


class QueryService:
    """Patient Root and Study Root C-FIND (see :class:`echoes.dicom.service.Service`)."""

    def __init__(self, config: Config, reader: IndexReader | None = None) -> None:
        self.config = config
        self.index = CachingReader(reader or open_index(config))
        self.accepted = {sop_class: frozenset(syntax.UNCOMPRESSED) for sop_class in FIND_CLASSES}

    def receiver(self, association_: association.Association, context: pdu.ContextResult,
                 command: dict[int, bytes]) -> FindRequest | None:
        """A collector for a C-FIND-RQ on one of our contexts (None for anything else)."""
        if (dimse.command_us(command, dimse.COMMAND_FIELD) != dimse.C_FIND_RQ
                or context.abstract_syntax not in self.accepted
                or not dimse.has_data_set(command)):
            return None
        return FindRequest(self, association_, context, command)

    def closed(self, association_: association.Association, how: str) -> None:
        """Nothing kept per association (each query logs its own line)."""

    def answer(self, request: FindRequest) -> tuple[int, str]:
        """Send one Pending response per match; return the final status."""
        started = time.monotonic()
        caller = request.association.calling_ae
        model = request.context.abstract_syntax
        if not qr_access.qr_allowed(self.config, caller):
            log.warning("C-FIND from %s refused (0x%04X): not in qr_allowed_calling_aes",
                        caller, qr_access.NOT_ALLOWED)
            return qr_access.NOT_ALLOWED, qr_access.refusal_comment(caller)
        try:
            query = self.parse(request)
            documents = self.find(query)
        except qr_find.FindError as exc:
            log.warning("C-FIND from %s (%s) refused (0x%04X): %s", caller,
                        qr_find.MODEL_NAMES.get(model, model), exc.status, exc.comment)
            return exc.status, exc.comment
        except Exception as exc:  # the index unreadable: this query fails, not the worker
            # One line, no traceback: a traceback in a worker's output means a crash.
            log.error("C-FIND from %s failed (0x%04X): %s: %s", caller, UNABLE_TO_PROCESS,
                      type(exc).__name__, exc)
            return UNABLE_TO_PROCESS, "Unable to process the query"
        matched, outcome = self.send(request, query, documents)
        log.info("C-FIND from %s: %s, %s level, %d keys (matched on %s), %d matches, "
                 "%s in %.3f s", caller, qr_find.MODEL_NAMES[model], query.level,
                 query.key_count, ",".join(query.matching_keys()) or "nothing", matched,
                 outcome, time.monotonic() - started)
        return (CANCEL, "") if outcome == "cancelled" else (SUCCESS, "")

    @staticmethod
    def parse(request: FindRequest) -> qr_find.FindQuery:
        """The request's identifier as a query (FindError when it cannot be one)."""
        if request.too_long:
            raise qr_find.FindError(CANNOT_UNDERSTAND,
                                    f"identifier over {MAX_IDENTIFIER} bytes")
        try:
            implicit, little = syntax.encoding_of(request.context.transfer_syntax)
            data = bytes(request.identifier)
            part10.check_dataset(data, implicit, little)  # pydicom keeps truncated values
            identifier = dataset.decode_dataset(data, implicit, little)
        except part10.MalformedDataset as exc:  # structural words only: no values
            raise qr_find.FindError(CANNOT_UNDERSTAND, f"malformed identifier: {exc}") from None
        except Exception as exc:  # anything pydicom cannot read as a data set
            raise qr_find.FindError(CANNOT_UNDERSTAND, qr_find.undecodable(exc)) from None
        return qr_find.parse_identifier(request.context.abstract_syntax, identifier)

    def find(self, query: qr_find.FindQuery) -> list[dict]:
        """The matching index documents of the query's level."""
        if query.level != qr_find.PATIENT:
            return self.index.query(query.level, query.filters)
        matched = self.index.query(qr_find.STUDY, query.filters)
        return qr_find.patients(matched, self.index.studies() if query.counts_asked else None)

    def send(self, request: FindRequest, query: qr_find.FindQuery,
             documents: list[dict]) -> tuple[int, str]:
        """Pending responses, looking for a C-CANCEL every few; (sent, outcome)."""
        association_ = request.association
        writer = PendingWriter(association_, request.context, request.sop_class,
                               request.message_id)
        ae_title = self.config.ae_title
        sent = 0
        for document in documents:
            if sent % CANCEL_CHECK_EVERY == 0 and association_.cancel_requested():
                writer.flush()
                return sent, "cancelled"
            tree = qr_find.response_tree(query, document, ae_title)
            try:
                identifier = qr_find.encode_response(query, tree, writer.syntax)
            except (ValueError, UnicodeError, struct.error) as exc:
                # One unencodable document (a Rows that is not a number) must not end the query.
                log.error("C-FIND answer for %s cannot be encoded: %s",
                          document.get(qr_find.UNIQUE_KEYS[query.level], "?"), exc)
                continue
            writer.pending(identifier)
            sent += 1
        writer.flush()
        return sent, "done"
