#!/usr/bin/env python3
"""End-to-end check of the dbps services, through their gRPC APIs only.

1. registers a customer with a unique email (customer service),
2. creates a product with a unique SKU (inventory service),
3. places an order for it (order service), retrying FAILED_PRECONDITION with
   the same idempotency key until the order service's replicas have caught up,
4. polls the customer until its loyalty points show the order (10 % of the
   total, rounded down), which travels order -> RabbitMQ -> customer.

Prints a summary and exits 0, or says what went wrong and exits 1. Every wait
is a bounded poll. Run ./generate.sh first (see README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

# The generated stubs import each other as `order.v1...`, so gen/ goes on the path.
GEN_DIR = Path(__file__).resolve().parent / "gen"
sys.path.insert(0, str(GEN_DIR))

try:
    import grpc
    from customer.v1 import customer_pb2, customer_pb2_grpc
    from inventory.v1 import inventory_pb2, inventory_pb2_grpc
    from order.v1 import order_pb2, order_pb2_grpc
except ImportError as error:  # pragma: no cover - depends on the environment
    sys.exit(
        f"place_order.py: cannot import grpc or the generated stubs ({error}).\n"
        "  Set up once:  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt\n"
        "  Then:         ./generate.sh   (writes gen/)"
    )

T = TypeVar("T")

# Codes worth retrying PlaceOrder on. FAILED_PRECONDITION: the order service has
# not yet seen the customer.registered / product.changed events. UNAVAILABLE:
# a transient transport failure. Both are safe because the idempotency key
# stays the same, so a retry can never create a second order.
RETRYABLE_PLACE_ORDER = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)


class Failure(Exception):
    """Something went wrong; the message says what."""


@dataclass(frozen=True)
class Addresses:
    order: str
    customer: str
    inventory: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Register a customer, create a product, place an order and wait for "
            "the customer's loyalty points (end-to-end check of the services)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--order-addr",
        default=os.environ.get("ORDER_ADDR", "localhost:50051"),
        help="order service host:port (env ORDER_ADDR)",
    )
    parser.add_argument(
        "--customer-addr",
        default=os.environ.get("CUSTOMER_ADDR", "localhost:50052"),
        help="customer service host:port (env CUSTOMER_ADDR)",
    )
    parser.add_argument(
        "--inventory-addr",
        default=os.environ.get("INVENTORY_ADDR", "localhost:50053"),
        help="inventory service host:port (env INVENTORY_ADDR)",
    )
    parser.add_argument("--price-cents", type=int, default=4999, help="price of the new product")
    parser.add_argument("--stock", type=int, default=10, help="initial stock of the new product")
    parser.add_argument("--quantity", type=int, default=2, help="units ordered")
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0,
        help="seconds to wait for each service's channel to become ready",
    )
    parser.add_argument(
        "--order-timeout", type=float, default=10.0,
        help="seconds to keep retrying PlaceOrder while it answers FAILED_PRECONDITION",
    )
    parser.add_argument(
        "--points-timeout", type=float, default=10.0,
        help="seconds to wait for the loyalty points after the order",
    )
    parser.add_argument(
        "--rpc-timeout", type=float, default=5.0, help="deadline of each single RPC, in seconds",
    )
    args = parser.parse_args(argv)
    for name in ("connect_timeout", "order_timeout", "points_timeout", "rpc_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.quantity <= 0 or args.stock < 0 or args.price_cents < 0:
        parser.error("--quantity must be positive, --stock and --price-cents not negative")
    return args


def remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def describe(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"


def call(what: str, method: Callable[..., T], request: object, timeout: float) -> T:
    """One unary call; any gRPC error becomes a Failure naming the call."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise Failure(f"{what} failed: {describe(error)}") from error


def connect(name: str, address: str, timeout: float) -> grpc.Channel:
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError as error:
        channel.close()
        raise Failure(f"{name} service at {address} not reachable within {timeout:g} s") from error
    return channel


def place_order_with_retry(
    stub: order_pb2_grpc.OrderServiceStub,
    request: order_pb2.PlaceOrderRequest,
    timeout: float,
    rpc_timeout: float,
) -> tuple[order_pb2.Order, int]:
    """PlaceOrder, retried with the same request (same idempotency key) on
    retryable codes, with capped exponential backoff, until `timeout` seconds
    have passed. Returns the order and the number of attempts."""
    deadline = time.monotonic() + timeout
    backoff = 0.02
    attempts = 0
    while True:
        attempts += 1
        try:
            order = stub.PlaceOrder(request, timeout=max(0.001, min(rpc_timeout, remaining(deadline))))
            return order, attempts
        except grpc.RpcError as error:
            if error.code() not in RETRYABLE_PLACE_ORDER:
                raise Failure(f"PlaceOrder failed: {describe(error)}") from error
            if remaining(deadline) <= 0:
                raise Failure(
                    f"PlaceOrder still failing after {attempts} attempts in {timeout:g} s: "
                    f"{describe(error)} (has the order service consumed the customer "
                    "and product events?)"
                ) from error
            time.sleep(min(backoff, max(0.0, remaining(deadline))))
            backoff = min(backoff * 2, 0.5)


def wait_for_points(
    stub: customer_pb2_grpc.CustomerServiceStub,
    customer_id: str,
    expected: int,
    timeout: float,
    rpc_timeout: float,
) -> tuple[customer_pb2.Customer, int]:
    """Polls GetCustomer until loyalty_points == expected or `timeout` seconds
    have passed. Returns the customer and the number of polls."""
    deadline = time.monotonic() + timeout
    interval = 0.02
    polls = 0
    request = customer_pb2.GetCustomerRequest(customer_id=customer_id)
    while True:
        polls += 1
        customer = call(
            "GetCustomer", stub.GetCustomer, request, max(0.001, min(rpc_timeout, remaining(deadline)))
        )
        if customer.loyalty_points == expected:
            return customer, polls
        if remaining(deadline) <= 0:
            raise Failure(
                f"loyalty points of customer {customer_id} are {customer.loyalty_points}, "
                f"expected {expected}, after {polls} polls in {timeout:g} s "
                "(is the customer service consuming order.created from RabbitMQ?)"
            )
        time.sleep(min(interval, max(0.0, remaining(deadline))))
        interval = min(interval * 2, 0.25)


def run(args: argparse.Namespace) -> None:
    addrs = Addresses(order=args.order_addr, customer=args.customer_addr, inventory=args.inventory_addr)
    channels = [
        connect("customer", addrs.customer, args.connect_timeout),
        connect("inventory", addrs.inventory, args.connect_timeout),
        connect("order", addrs.order, args.connect_timeout),
    ]
    try:
        customers = customer_pb2_grpc.CustomerServiceStub(channels[0])
        inventory = inventory_pb2_grpc.InventoryServiceStub(channels[1])
        orders = order_pb2_grpc.OrderServiceStub(channels[2])

        unique = uuid.uuid4().hex
        customer = call(
            "RegisterCustomer",
            customers.RegisterCustomer,
            customer_pb2.RegisterCustomerRequest(
                name="Python Client", email=f"py-client-{unique}@example.com"
            ),
            args.rpc_timeout,
        )
        print(f"customer  {customer.customer_id}  {customer.email}  points {customer.loyalty_points}")

        product = call(
            "CreateProduct",
            inventory.CreateProduct,
            inventory_pb2.CreateProductRequest(
                sku=f"PY-{unique[:16].upper()}",
                name="Python client test product",
                price_cents=args.price_cents,
                initial_stock=args.stock,
            ),
            args.rpc_timeout,
        )
        print(f"product   {product.sku}  price {product.price_cents} cents  available {product.available}")

        request = order_pb2.PlaceOrderRequest(
            customer_id=customer.customer_id,
            lines=[order_pb2.LineItem(sku=product.sku, quantity=args.quantity)],
            idempotency_key=f"py-client-{uuid.uuid4()}",
        )
        started = time.monotonic()
        order, attempts = place_order_with_retry(orders, request, args.order_timeout, args.rpc_timeout)
        placed = time.monotonic()
        print(
            f"order     {order.order_id}  {args.quantity} x {product.sku}  total {order.total_cents} cents  "
            f"{order_pb2.OrderStatus.Name(order.status)}  "
            f"({attempts} attempt{'s' if attempts != 1 else ''}, {(placed - started) * 1000:.0f} ms)"
        )
        expected_total = product.price_cents * args.quantity
        if order.total_cents != expected_total:
            raise Failure(f"order total is {order.total_cents} cents, expected {expected_total}")
        if order.customer_id != customer.customer_id:
            raise Failure(f"order belongs to {order.customer_id}, expected {customer.customer_id}")

        expected_points = customer.loyalty_points + order.total_cents // 10
        customer, polls = wait_for_points(
            customers, customer.customer_id, expected_points, args.points_timeout, args.rpc_timeout
        )
        arrived = time.monotonic()
        print(
            f"points    {customer.loyalty_points} (= {order.total_cents} // 10) arrived "
            f"{(arrived - placed) * 1000:.0f} ms after the order ({polls} poll{'s' if polls != 1 else ''})"
        )

        # Informational: where the order's saga is by now (PENDING until the
        # inventory service has reserved the stock).
        latest = call(
            "GetOrder", orders.GetOrder, order_pb2.GetOrderRequest(order_id=order.order_id), args.rpc_timeout
        )
        print(f"status    {order_pb2.OrderStatus.Name(latest.status)} {latest.status_reason}".rstrip())
        print("OK")
    finally:
        for channel in channels:
            channel.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except Failure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
