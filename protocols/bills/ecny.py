"""e-CNY statement download, on the bank JSON shape (``protocols.bills.bankjson``)."""

from protocols.bills.bankjson import BillServer, Downloader
from protocols.statements import bankcsv as statement_format

PATH = "/ecny/v1/bill/download"
downloader = Downloader(PATH)
server = BillServer(PATH)
__all__ = ["downloader", "server", "statement_format"]
