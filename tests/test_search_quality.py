"""Retrieval quality with the offline hashing embedder: a small corpus, questions in other words."""

from __future__ import annotations

from tests.documents_support import SEARCH, ingest_text
from tests.support import LiveServer

CORPUS = {
    "Expense policy": """# Expense policy

Employees are reimbursed for business travel, meals with clients and training courses.
Submit every claim within thirty days together with the original receipts. Claims above
500 euros need the approval of a department head before payment.

## Mileage

Use of a private car is refunded at 0.30 euros per kilometre driven for work.""",
    "Password and account security": """# Account security

Passwords must be at least twelve characters long and are changed every ninety days.
If you forgot your password, open the self-service portal and choose reset password; a
link is sent to your registered phone. Multi-factor authentication is mandatory for
remote access.""",
    "Warehouse safety": """# Warehouse safety rules

Forklift drivers need a valid licence and must wear a high-visibility vest. Pallets are
never stacked higher than three levels. Spills are reported to the shift supervisor at
once and the area is blocked with cones.""",
    "ERP migration plan": """# ERP migration plan

The legacy ERP system is replaced in three waves: finance first, then procurement, then
manufacturing. Master data is cleansed and migrated before each wave. Cut-over happens
over a weekend with a rollback plan if reconciliation fails.""",
    "Holiday and leave": """# Annual leave

Full-time staff receive twenty-eight days of paid vacation per year. Requests are made
in the HR portal at least two weeks ahead. Unused vacation days can be carried over until
the end of March of the following year. Parental leave is handled separately.""",
    "Customer returns": """# Returns and refunds

Customers may return products within thirty days of delivery in their original packaging.
Refunds are issued to the original payment method within five business days after the
returned goods are inspected. Custom-made items cannot be returned.""",
    "Server backups": """# Backup procedure

Databases are backed up every night at 02:00 with a full snapshot on Sundays. Backups are
encrypted and copied to a second data centre. Restores are tested once per quarter and the
retention period is ninety days.""",
    "Onboarding checklist": """# New hire onboarding

On the first day the new colleague receives a laptop, a badge and a mentor. During the
first week they complete the compliance training and meet their team. The probation period
lasts six months with a review meeting at the end.""",
    "Coffee machine": """# Kitchen and coffee machine

The espresso machine on the second floor is descaled every Friday. Milk is stored in the
small fridge and must be labelled. Report broken appliances to facilities.""",
    "Invoice processing": """# Supplier invoices

Invoices from suppliers are matched against the purchase order and the goods receipt
(three-way match) before payment. Payment terms are thirty days net. Invoices without a
purchase order number are returned to the supplier.""",
}

QUESTIONS = {
    "How do I reset my forgotten password?": "Password and account security",
    "How much is refunded per kilometre when I drive my own car?": "Expense policy",
    "How high can pallets be stacked in the warehouse?": "Warehouse safety",
    "Which business area moves first to the new ERP?": "ERP migration plan",
    "How many vacation days do full-time employees get?": "Holiday and leave",
    "Can a customer return a custom-made product?": "Customer returns",
    "How often are restores of the database backups tested?": "Server backups",
    "How long is the probation period for new hires?": "Onboarding checklist",
    "When is the espresso machine descaled?": "Coffee machine",
    "What is checked before a supplier invoice is paid?": "Invoice processing",
}


async def test_the_right_document_ranks_first(server: LiveServer) -> None:
    account = await server.register()
    ids = {}
    for title, body in CORPUS.items():
        document = await ingest_text(
            server, account.access_token, body, title=title, mime_type="text/markdown"
        )
        ids[document["id"]] = title

    ranks: dict[str, int | None] = {}
    for question, expected in QUESTIONS.items():
        hits = (
            await server.execute(SEARCH, {"q": question, "limit": 5}, token=account.access_token)
        ).ok()["search"]
        titles = [ids[hit["document"]["id"]] for hit in hits]
        ranks[question] = titles.index(expected) + 1 if expected in titles else None

    top1 = sum(rank == 1 for rank in ranks.values())
    assert top1 >= 8, ranks
    assert all(rank is not None and rank <= 3 for rank in ranks.values()), ranks
