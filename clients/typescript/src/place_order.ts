/**
 * End-to-end check of the dbps services through their gRPC APIs only, the
 * same flow as ../python/place_order.py:
 *
 * 1. registers a customer with a unique email (customer service),
 * 2. creates a product with a unique SKU (inventory service),
 * 3. places an order for it (order service), retrying FAILED_PRECONDITION with
 *    the same idempotency key until the order service's replicas have caught up,
 * 4. watches the order (WatchOrder, a server stream) until inventory has
 *    reserved the stock and it is APPROVED,
 * 5. polls the customer until its loyalty points show the order (10 % of the
 *    total, rounded down), which travels order -> RabbitMQ -> customer.
 *
 * Prints a summary and exits 0, or says what went wrong and exits 1. Every
 * wait is bounded. The types come from ../gen (./generate.sh); the messages
 * are loaded at run time from ../../proto with the generator's options.
 */

import { randomUUID } from "node:crypto";
import * as path from "node:path";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType as CustomerProto } from "../gen/customer";
import type { ProtoGrpcType as InventoryProto } from "../gen/inventory";
import type { ProtoGrpcType as OrderProto } from "../gen/order";
import type { CustomerServiceClient } from "../gen/customer/v1/CustomerService";
import type { Customer__Output } from "../gen/customer/v1/Customer";
import type { Product__Output } from "../gen/inventory/v1/Product";
import type { OrderServiceClient } from "../gen/order/v1/OrderService";
import type { Order__Output } from "../gen/order/v1/Order";
import type { PlaceOrderRequest } from "../gen/order/v1/PlaceOrderRequest";
import { OrderStatus } from "../gen/order/v1/OrderStatus";

/** The options generate.sh gives proto-loader-gen-types, so the generated types hold. */
const LOADER_OPTIONS: protoLoader.Options = {
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

/**
 * Codes worth retrying PlaceOrder on. FAILED_PRECONDITION: the order service
 * has not yet seen the customer.registered / product.changed events.
 * UNAVAILABLE: a transient transport failure. Both are safe because the
 * idempotency key stays the same, so a retry can never create a second order.
 */
const RETRYABLE_PLACE_ORDER = new Set([grpc.status.FAILED_PRECONDITION, grpc.status.UNAVAILABLE]);

/** Something went wrong; the message says what. */
class Failure extends Error {}

interface Options {
  orderAddr: string;
  customerAddr: string;
  inventoryAddr: string;
  protoDir: string;
  priceCents: bigint;
  stock: bigint;
  quantity: number;
  /** All in milliseconds. */
  connectTimeout: number;
  orderTimeout: number;
  approvalTimeout: number;
  pointsTimeout: number;
  rpcTimeout: number;
}

const USAGE = `usage: place_order [options]

Register a customer, create a product, place an order, watch it until it is
APPROVED and wait for the customer's loyalty points (end-to-end check of the
services).

  --order-addr HOST:PORT      order service (env ORDER_ADDR, default localhost:50051)
  --customer-addr HOST:PORT   customer service (env CUSTOMER_ADDR, default localhost:50052)
  --inventory-addr HOST:PORT  inventory service (env INVENTORY_ADDR, default localhost:50053)
  --proto-dir DIR             the contracts (default: the repository's proto/)
  --price-cents N             price of the new product (default 4999)
  --stock N                   initial stock of the new product (default 10)
  --quantity N                units ordered (default 2)
  --connect-timeout S         seconds to wait for each service's channel (default 10)
  --order-timeout S           seconds to keep retrying PlaceOrder (default 10)
  --approval-timeout S        seconds to wait for APPROVED (default 10)
  --points-timeout S          seconds to wait for the loyalty points (default 10)
  --rpc-timeout S             deadline of each single RPC, in seconds (default 5)
  -h, --help                  this text`;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      "order-addr": { type: "string", default: process.env.ORDER_ADDR ?? "localhost:50051" },
      "customer-addr": { type: "string", default: process.env.CUSTOMER_ADDR ?? "localhost:50052" },
      "inventory-addr": { type: "string", default: process.env.INVENTORY_ADDR ?? "localhost:50053" },
      "proto-dir": { type: "string", default: path.resolve(__dirname, "../../../../proto") },
      "price-cents": { type: "string", default: "4999" },
      stock: { type: "string", default: "10" },
      quantity: { type: "string", default: "2" },
      "connect-timeout": { type: "string", default: "10" },
      "order-timeout": { type: "string", default: "10" },
      "approval-timeout": { type: "string", default: "10" },
      "points-timeout": { type: "string", default: "10" },
      "rpc-timeout": { type: "string", default: "5" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const integer = (name: string, text: string, min: bigint): bigint => {
    if (!/^\d+$/.test(text) || BigInt(text) < min) {
      throw new Failure(`--${name} must be an integer of at least ${min}, not ${JSON.stringify(text)}`);
    }
    return BigInt(text);
  };
  const seconds = (name: string, text: string): number => {
    const value = Number(text);
    if (!Number.isFinite(value) || value <= 0) {
      throw new Failure(`--${name} must be a positive number of seconds, not ${JSON.stringify(text)}`);
    }
    return value * 1000;
  };
  return {
    orderAddr: values["order-addr"],
    customerAddr: values["customer-addr"],
    inventoryAddr: values["inventory-addr"],
    protoDir: values["proto-dir"],
    priceCents: integer("price-cents", values["price-cents"], 0n),
    stock: integer("stock", values.stock, 0n),
    quantity: Number(integer("quantity", values.quantity, 1n)),
    connectTimeout: seconds("connect-timeout", values["connect-timeout"]),
    orderTimeout: seconds("order-timeout", values["order-timeout"]),
    approvalTimeout: seconds("approval-timeout", values["approval-timeout"]),
    pointsTimeout: seconds("points-timeout", values["points-timeout"]),
    rpcTimeout: seconds("rpc-timeout", values["rpc-timeout"]),
  };
}

function load<T>(protoDir: string, file: string): T {
  const definition = protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
  return grpc.loadPackageDefinition(definition) as unknown as T;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function deadlineIn(ms: number): Date {
  return new Date(Date.now() + Math.max(1, ms));
}

function describe(error: grpc.ServiceError): string {
  return `${grpc.status[error.code] ?? error.code}: ${error.details}`;
}

function isServiceError(error: unknown): error is grpc.ServiceError {
  return error instanceof Error && typeof (error as grpc.ServiceError).code === "number";
}

/** One unary call with a deadline, as a promise. */
function unary<T>(
  start: (options: grpc.CallOptions, callback: grpc.requestCallback<T>) => grpc.ClientUnaryCall,
  timeoutMs: number,
): Promise<T> {
  return new Promise((resolve, reject) => {
    start({ deadline: deadlineIn(timeoutMs) }, (error, value) => {
      if (error) {
        reject(error);
      } else if (value === undefined) {
        reject(new Failure("empty response"));
      } else {
        resolve(value);
      }
    });
  });
}

/** Like {@link unary}, but any gRPC error becomes a Failure naming the call. */
async function call<T>(
  what: string,
  start: (options: grpc.CallOptions, callback: grpc.requestCallback<T>) => grpc.ClientUnaryCall,
  timeoutMs: number,
): Promise<T> {
  try {
    return await unary(start, timeoutMs);
  } catch (error) {
    throw isServiceError(error) ? new Failure(`${what} failed: ${describe(error)}`) : error;
  }
}

async function connect(name: string, client: grpc.Client, address: string, timeoutMs: number) {
  await new Promise<void>((resolve, reject) => {
    client.waitForReady(deadlineIn(timeoutMs), (error) => {
      if (error) {
        reject(new Failure(`${name} service at ${address} not reachable within ${timeoutMs / 1000} s`));
      } else {
        resolve();
      }
    });
  });
}

/**
 * PlaceOrder, retried with the same request (same idempotency key) on
 * retryable codes, with capped exponential backoff, until `timeoutMs` has
 * passed. Returns the order and the number of attempts.
 */
async function placeOrderWithRetry(
  orders: OrderServiceClient,
  request: PlaceOrderRequest,
  timeoutMs: number,
  rpcTimeoutMs: number,
): Promise<[Order__Output, number]> {
  const deadline = Date.now() + timeoutMs;
  let backoff = 20;
  for (let attempts = 1; ; attempts++) {
    const remaining = deadline - Date.now();
    try {
      const order = await unary<Order__Output>(
        (options, callback) => orders.placeOrder(request, options, callback),
        Math.min(rpcTimeoutMs, remaining),
      );
      return [order, attempts];
    } catch (error) {
      if (!isServiceError(error)) throw error;
      if (!RETRYABLE_PLACE_ORDER.has(error.code)) {
        throw new Failure(`PlaceOrder failed: ${describe(error)}`);
      }
      if (deadline - Date.now() <= 0) {
        throw new Failure(
          `PlaceOrder still failing after ${attempts} attempts in ${timeoutMs / 1000} s: ${describe(error)} ` +
            "(has the order service consumed the customer and product events?)",
        );
      }
      await sleep(Math.min(backoff, Math.max(0, deadline - Date.now())));
      backoff = Math.min(backoff * 2, 500);
    }
  }
}

/**
 * Watches the order (the stream sends its current state, then every change)
 * until it is APPROVED; fails if it ends REJECTED or CANCELLED, or if
 * `timeoutMs` passes first. Returns the approved order and how many states
 * the stream sent.
 */
function waitForApproval(
  orders: OrderServiceClient,
  orderId: string,
  timeoutMs: number,
): Promise<[Order__Output, number]> {
  return new Promise((resolve, reject) => {
    const stream = orders.watchOrder({ orderId }, { deadline: deadlineIn(timeoutMs) });
    let seen = 0;
    let last: Order__Output | undefined;
    let settled = false;
    const settle = (outcome: () => void) => {
      if (!settled) {
        settled = true;
        outcome();
      }
    };
    stream.on("data", (order: Order__Output) => {
      seen += 1;
      last = order;
      if (order.status === OrderStatus.ORDER_STATUS_APPROVED) {
        settle(() => resolve([order, seen]));
        stream.cancel(); // APPROVED can still change, so the server keeps the stream open
      } else if (
        order.status === OrderStatus.ORDER_STATUS_REJECTED ||
        order.status === OrderStatus.ORDER_STATUS_CANCELLED
      ) {
        settle(() =>
          reject(new Failure(`order ${orderId} ended ${order.status}: ${order.statusReason}`)),
        );
      }
    });
    stream.on("error", (error: grpc.ServiceError) => {
      if (error.code === grpc.status.CANCELLED && settled) return; // our own cancel
      settle(() =>
        reject(
          new Failure(
            `WatchOrder ended before APPROVED (last ${last?.status ?? "nothing"}): ${describe(error)}` +
              (error.code === grpc.status.DEADLINE_EXCEEDED
                ? " (is the inventory service consuming order.created?)"
                : ""),
          ),
        ),
      );
    });
    stream.on("end", () =>
      settle(() => reject(new Failure(`WatchOrder ended before APPROVED (last ${last?.status ?? "nothing"})`))),
    );
  });
}

/**
 * Polls GetCustomer until its loyalty points are `expected`, or `timeoutMs`
 * has passed. Returns the customer and the number of polls.
 */
async function waitForPoints(
  customers: CustomerServiceClient,
  customerId: string,
  expected: bigint,
  timeoutMs: number,
  rpcTimeoutMs: number,
): Promise<[Customer__Output, number]> {
  const deadline = Date.now() + timeoutMs;
  let interval = 20;
  for (let polls = 1; ; polls++) {
    const customer = await call<Customer__Output>(
      "GetCustomer",
      (options, callback) => customers.getCustomer({ customerId }, options, callback),
      Math.min(rpcTimeoutMs, deadline - Date.now()),
    );
    if (BigInt(customer.loyaltyPoints) === expected) {
      return [customer, polls];
    }
    if (deadline - Date.now() <= 0) {
      throw new Failure(
        `loyalty points of customer ${customerId} are ${customer.loyaltyPoints}, expected ${expected}, ` +
          `after ${polls} polls in ${timeoutMs / 1000} s ` +
          "(is the customer service consuming order.created from RabbitMQ?)",
      );
    }
    await sleep(Math.min(interval, Math.max(0, deadline - Date.now())));
    interval = Math.min(interval * 2, 250);
  }
}

async function run(options: Options): Promise<void> {
  const customerProto = load<CustomerProto>(options.protoDir, "customer/v1/customer.proto");
  const inventoryProto = load<InventoryProto>(options.protoDir, "inventory/v1/inventory.proto");
  const orderProto = load<OrderProto>(options.protoDir, "order/v1/order.proto");
  const credentials = grpc.credentials.createInsecure();
  const customers = new customerProto.customer.v1.CustomerService(options.customerAddr, credentials);
  const inventory = new inventoryProto.inventory.v1.InventoryService(options.inventoryAddr, credentials);
  const orders = new orderProto.order.v1.OrderService(options.orderAddr, credentials);
  try {
    await connect("customer", customers, options.customerAddr, options.connectTimeout);
    await connect("inventory", inventory, options.inventoryAddr, options.connectTimeout);
    await connect("order", orders, options.orderAddr, options.connectTimeout);

    const unique = randomUUID().replaceAll("-", "");
    const customer = await call<Customer__Output>(
      "RegisterCustomer",
      (o, cb) =>
        customers.registerCustomer({ name: "TypeScript Client", email: `ts-client-${unique}@example.com` }, o, cb),
      options.rpcTimeout,
    );
    console.log(`customer  ${customer.customerId}  ${customer.email}  points ${customer.loyaltyPoints}`);

    const product = await call<Product__Output>(
      "CreateProduct",
      (o, cb) =>
        inventory.createProduct(
          {
            sku: `TS-${unique.slice(0, 16).toUpperCase()}`,
            name: "TypeScript client test product",
            priceCents: options.priceCents.toString(),
            initialStock: options.stock.toString(),
          },
          o,
          cb,
        ),
      options.rpcTimeout,
    );
    console.log(`product   ${product.sku}  price ${product.priceCents} cents  available ${product.available}`);

    const request: PlaceOrderRequest = {
      customerId: customer.customerId,
      lines: [{ sku: product.sku, quantity: options.quantity }],
      idempotencyKey: `ts-client-${randomUUID()}`,
    };
    const started = Date.now();
    const [order, attempts] = await placeOrderWithRetry(orders, request, options.orderTimeout, options.rpcTimeout);
    const placed = Date.now();
    console.log(
      `order     ${order.orderId}  ${options.quantity} x ${product.sku}  total ${order.totalCents} cents  ` +
        `${order.status}  (${attempts} attempt${attempts === 1 ? "" : "s"}, ${placed - started} ms)`,
    );
    const total = BigInt(order.totalCents);
    const expectedTotal = BigInt(product.priceCents) * BigInt(options.quantity);
    if (total !== expectedTotal) {
      throw new Failure(`order total is ${total} cents, expected ${expectedTotal}`);
    }
    if (order.customerId !== customer.customerId) {
      throw new Failure(`order belongs to ${order.customerId}, expected ${customer.customerId}`);
    }

    const [approved, states] = await waitForApproval(orders, order.orderId, options.approvalTimeout);
    console.log(
      `status    ${approved.status} ${Date.now() - placed} ms after the order ` +
        `(${states} state${states === 1 ? "" : "s"} watched)`,
    );

    const expectedPoints = BigInt(customer.loyaltyPoints) + total / 10n;
    const [credited, polls] = await waitForPoints(
      customers,
      customer.customerId,
      expectedPoints,
      options.pointsTimeout,
      options.rpcTimeout,
    );
    console.log(
      `points    ${credited.loyaltyPoints} (= ${total} / 10) after ${polls} poll${polls === 1 ? "" : "s"}`,
    );
    console.log("OK");
  } finally {
    customers.close();
    inventory.close();
    orders.close();
  }
}

async function main(): Promise<number> {
  try {
    await run(parseOptions(process.argv.slice(2)));
    return 0;
  } catch (error) {
    if (error instanceof Failure) {
      console.error(`FAILED: ${error.message}`);
      return 1;
    }
    if (error instanceof TypeError && (error as NodeJS.ErrnoException).code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`${error.message}\n\n${USAGE}`);
      return 1;
    }
    throw error;
  }
}

main().then((code) => {
  process.exitCode = code;
});
